"""The configuration of one training run (frozen, validated on construction)."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from factorch.models.spec import ModelSpec
from factorch.training.events.base import Event


@dataclass(frozen=True)
class Schedule:
    """Step decay (the paper's CIFAR schedule): ``lr * gamma ** (number of milestones passed)``,
    milestones at the given fractions of ``epochs`` (0.5 and 0.75: epochs 100 and 150 of 200).

    A pure function of the epoch, so it continues unchanged across a decomposition (a new
    optimizer) and a resume: there is no scheduler state to carry."""

    lr: float = 0.1
    epochs: int = 200
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be a positive number, got {self.lr!r}")
        if not all(0 < m <= 1 for m in self.milestones):
            raise ValueError(f"LR milestones are fractions of the epochs in (0, 1], got {self.milestones!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"LR decay gamma must be in (0, 1], got {self.gamma!r}")

    def epoch_milestones(self) -> list[int]:
        return [round(m * self.epochs) for m in self.milestones]

    def lr_at(self, epoch: int) -> float:
        """LR for 0-based ``epoch`` (epochs past ``self.epochs`` keep the last value)."""
        return self.lr * self.gamma ** sum(epoch >= m for m in self.epoch_milestones())


@dataclass(frozen=True)
class TrainConfig:
    """One run: model, data, optimizer (SGD, the defaults of Elhoushi et al. 2019) and the training
    events, each with its own settings (``factorch.training.events``).

    ``model``: any ``--model`` spelling (``factorch.models.spec``: a zoo name, ``torchvision:NAME``,
    ``pkg.module:function``, ...) with ``model_args`` its keyword arguments; the dataset gives the
    classes and input channels. ``weights``: start from these trained weights (a state_dict or a
    factorch checkpoint, ``io.load_into``) instead of a random init: the model then is the teacher
    of a distillation event and the start of ADMM and fine-tuning (``factorch compress``).

    ``epochs`` is the number of epochs run; ``schedule_epochs`` (default ``epochs``) the length the
    LR milestones are fractions of: "original-then-dec+E" runs ``epochs + E`` epochs on the
    original's schedule. ``events``: e.g. ``(Decompose(10), Reconstruct(190))`` or
    ``(ADMMPhase(until=20),)``; a run works on fresh copies (``build_events``).

    ``channels_last``: the memory format of the model and its inputs (None, "auto": channels_last
    for conv models on CPU and CUDA, where it is measured faster; ``loop.uses_channels_last``),
    applied again after every change of architecture; the events read it from the run.
    """

    model: str = "vgg19"
    model_args: dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None
    dataset: str = "digits"
    data_dir: Optional[str] = None
    epochs: int = 200
    schedule_epochs: Optional[int] = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    subset: Optional[int] = None
    augment: bool = True
    amp: bool = False
    channels_last: Optional[bool] = None
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    events: tuple[Event, ...] = ()

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.schedule_epochs is not None and (not isinstance(self.schedule_epochs, int) or self.schedule_epochs < 1):
            raise ValueError(f"schedule_epochs must be a positive int, got {self.schedule_epochs!r}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError(f"momentum must be in [0, 1) and weight decay >= 0, got {self.momentum}, {self.weight_decay}")
        self.schedule  # validates lr and milestones
        if not isinstance(self.events, tuple) or not all(isinstance(e, Event) for e in self.events):
            raise ValueError(f"events must be a tuple of training events, got {self.events!r}")
        for event in self.events:
            event.validate(self.epochs, self.events)
        at: dict[int, str] = {}
        for event in self.events:
            for epoch, _ in event.changes():
                if epoch in at:
                    raise ValueError(f"{at[epoch]} and {event.label} both change the architecture before epoch "
                                     f"{epoch + 1}; one change per epoch")
                at[epoch] = event.label
        ModelSpec.parse(self.model, self.model_args)  # a malformed spelling or argument fails now
        if self.subset is not None and (not isinstance(self.subset, int) or self.subset < 1):
            raise ValueError(f"subset must be a positive int, got {self.subset!r}")
        if self.channels_last not in (None, True, False):
            raise ValueError(f"channels_last must be True, False or None (auto), got {self.channels_last!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

    def build_events(self) -> tuple[Event, ...]:
        """Fresh copies of ``events`` for one run (a run's events hold its state; the config's stay
        untouched)."""
        return copy.deepcopy(self.events)

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.lr, self.schedule_epochs or self.epochs, tuple(self.milestones))

    def as_dict(self) -> dict[str, Any]:
        """Plain values (each event by its ``describe()``), for checkpoints and logs."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["milestones"] = list(self.milestones)
        out["events"] = [e.describe() for e in self.events]
        return out


# Settings that do not change a run's results: a resumed run may change them.
RUNTIME_ONLY = ("data_dir", "device", "workers")


def first_event_epoch(config: dict[str, Any]) -> Optional[int]:
    """The first epoch before which a run (its ``as_dict()``, e.g. from a checkpoint) has an event
    act; None without events."""
    return min((e["first_epoch"] for e in config.get("events", [])), default=None)


# How checkpoints written before the events owned their settings spelled them: the decomposition
# settings sat in the run's config and applied to every event that decomposes
_OLD_SETTINGS = ("methods", "first_conv", "exclude", "calibration_batches", "keep_if_faster")


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config in today's form (``as_dict()``): one written before the events owned
    their settings (``decompose_at``, ``reconstruct_at`` and the decomposition settings at the top
    level) gets its events as ``describe()`` gives them, in the order those runs built them
    (decompose, reconstruct, then the others). Today's configs are returned unchanged."""
    if "decompose_at" not in config and "methods" not in config:
        return {"model_args": {}, "weights": None, **config, "events": list(config.get("events", []))}
    old = dict(config)
    shared = {"methods": list(old.get("methods", [])), "first_conv": bool(old.get("first_conv", False)),
              "exclude": list(old.get("exclude", []))}
    batches, timed = int(old.get("calibration_batches", 0)), bool(old.get("keep_if_faster", False))
    events = []
    if old.get("decompose_at") is not None:
        events.append({"kind": "decompose", **shared, "at": old["decompose_at"], "calibration_batches": batches,
                       "keep_if_faster": timed, "first_epoch": old["decompose_at"]})
    if old.get("reconstruct_at") is not None:
        events.append({"kind": "reconstruct", "at": old["reconstruct_at"], "first_epoch": old["reconstruct_at"]})
    for e in old.get("events", []):
        e = {k: v for k, v in e.items() if k != "uses_methods"}
        if e["kind"] == "admm":
            e = {"kind": "admm", **shared, **{k: v for k, v in e.items() if k != "kind"}, "calibration_batches": batches}
        elif e["kind"] == "from_scratch":
            e = {"kind": "from_scratch", **shared, **{k: v for k, v in e.items() if k != "kind"}}
        events.append(e)
    for key in ("decompose_at", "reconstruct_at", *_OLD_SETTINGS):
        old.pop(key, None)
    return {"model_args": {}, "weights": None, **old, "events": events}
