"""Training with decomposition events (seed 000, Elhoushi et al. 2019): the loop, the optimizer
hand-off, checkpoints that resume exactly, DDP, and the multi-scenario experiment.

    from factorch.training import TrainConfig, train
    history = train(TrainConfig(model="vgg19", dataset="cifar10", epochs=200, decompose_at=10), "runs/dec10")

``evaluate`` and ``train_epoch`` are the building blocks other workflows (fine-tuning) reuse.
"""
from factorch.training.config import Schedule, TrainConfig
from factorch.training.handoff import make_optimizer, rebuild_optimizer
from factorch.training.loop import evaluate, train_epoch
from factorch.training.run import train

__all__ = ["Schedule", "TrainConfig", "evaluate", "make_optimizer", "rebuild_optimizer", "train", "train_epoch"]
