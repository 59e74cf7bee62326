"""Training with events (seed 000, Elhoushi et al. 2019: decompose and reconstruct; seed 002, Yin
et al. 2021: low-rank ADMM): the loop, the optimizer hand-off, checkpoints that resume exactly,
DDP, and the multi-scenario experiment.

    from factorch.training import ADMMPhase, TrainConfig, train
    history = train(TrainConfig(model="vgg19", dataset="cifar10", epochs=200, decompose_at=10), "runs/dec10")
    history = train(TrainConfig(model="resnet20", epochs=30, methods=(fc.Tucker2(0.25),),
                                events=(ADMMPhase(until=20),)), "runs/admm20")

``evaluate`` and ``train_epoch`` are the building blocks other workflows (fine-tuning) reuse;
``events`` holds the event objects (a new one is one class: see ``events/base.py``).
"""
from factorch.training.config import Schedule, TrainConfig
from factorch.training.events import ADMMPhase, Decompose, Event, Reconstruct
from factorch.training.handoff import make_optimizer, rebuild_optimizer
from factorch.training.loop import evaluate, train_epoch
from factorch.training.run import train

__all__ = ["ADMMPhase", "Decompose", "Event", "Reconstruct", "Schedule", "TrainConfig", "evaluate",
           "make_optimizer", "rebuild_optimizer", "train", "train_epoch"]
