"""Training with events (Elhoushi et al. 2019: decompose and reconstruct; Yin et al. 2021: low-rank
ADMM; factorized layers from scratch): the loop, the optimizer hand-off, checkpoints that resume
exactly, DDP, and the multi-scenario experiment.

    from factorch.training import ADMMPhase, Decompose, TrainConfig, train
    history = train(TrainConfig(model="vgg19", dataset="cifar10", epochs=200, events=(Decompose(10),)), "runs/dec10")
    history = train(TrainConfig(model="resnet20", epochs=30,
                                events=(ADMMPhase(until=20, methods=(fc.Tucker2(0.25),)),)), "runs/admm20")

``evaluate`` and ``train_epoch`` are the building blocks other workflows (fine-tuning) reuse;
``events`` holds the event objects (a new one is one class: see ``events/base.py``).
"""
from factorch.training.config import Schedule, TrainConfig
from factorch.training.events import ADMMPhase, Decompose, Event, FromScratch, Reconstruct
from factorch.training.handoff import make_optimizer, rebuild_optimizer
from factorch.training.loop import evaluate, train_epoch
from factorch.training.run import train

__all__ = ["ADMMPhase", "Decompose", "Event", "FromScratch", "Reconstruct", "Schedule", "TrainConfig", "evaluate",
           "make_optimizer", "rebuild_optimizer", "train", "train_epoch"]
