"""The configuration of one training run (frozen, validated on construction)."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

from factorch.methods import Method, Tucker2
from factorch.measure.latency import Profiler, as_profiler
from factorch.rank import EVBMF
from factorch.selection import exclude_filter
from factorch.training.events import Decompose, Event, Reconstruct


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
    """One run: model, data, optimizer (SGD, the paper's defaults) and the training events.

    ``epochs`` is the number of epochs run; ``schedule_epochs`` (default ``epochs``) the length the
    LR milestones are fractions of: "original-then-dec+E" runs ``epochs + E`` epochs on the
    original's schedule. ``decompose_at=k``: train k epochs dense, then decompose (before epoch
    k + 1); ``reconstruct_at=m``: back to dense layers before epoch m + 1 (both build their event,
    ``events.Decompose``/``events.Reconstruct``). ``events``: more event objects, e.g.
    ``(events.ADMMPhase(until=20),)``. ``methods``, ``first_conv`` (decompose the first conv too;
    the paper leaves it dense: EVBMF on 3 input channels is noise) and ``exclude`` (regexes, full
    match, of layer names left dense) and ``calibration_batches`` (that many training batches, inputs
    only, for data-aware factors and ranks; 0: weight-only) say how every event decomposes.

    ``channels_last``: the memory format of the model and its inputs (None, "auto": channels_last
    for conv models on CPU and CUDA, where it is measured faster; ``loop.uses_channels_last``),
    applied again after every change of architecture. ``keep_if_faster`` (the ``Decompose`` event,
    ``decompose_at``): time each candidate layer dense and factorized, forward+backward at the
    per-process training batch, its real input size, the run's memory format and AMP setting, and
    keep it dense where the factorized form is not faster (``decompose_(keep_if_faster=...)``); a
    ``fc.Profiler`` gives the clock, warm-up and runs (``events.training_profiler``). Off by
    default here, so a run's result is a function of its settings and seed alone; ``factorch
    train`` turns it on (``--no-keep-if-faster``). The decision is made once, on rank 0, and the
    checkpoint holds the architecture it chose: a resumed run continues it exactly.
    """

    model: str = "vgg19"
    dataset: str = "digits"
    data_dir: Optional[str] = None
    epochs: int = 200
    schedule_epochs: Optional[int] = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    decompose_at: Optional[int] = None
    reconstruct_at: Optional[int] = None
    methods: tuple[Method, ...] = field(default_factory=lambda: (Tucker2(EVBMF()),))
    first_conv: bool = False
    exclude: tuple[str, ...] = ()
    calibration_batches: int = 0
    subset: Optional[int] = None
    augment: bool = True
    amp: bool = False
    channels_last: Optional[bool] = None
    keep_if_faster: Union[bool, Profiler] = False
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
        events = self.build_events()
        for event in events:
            event.validate(self, events)
        at: dict[int, str] = {}
        for event in events:
            for epoch, _ in event.changes():
                if epoch in at:
                    raise ValueError(f"{at[epoch]} and {event.label} both change the architecture before epoch "
                                     f"{epoch + 1}; one change per epoch")
                at[epoch] = event.label
        if not self.methods or not all(isinstance(x, Method) for x in self.methods):
            raise ValueError(f"methods must be a non-empty tuple of method configs, got {self.methods!r}")
        if isinstance(self.calibration_batches, bool) or not isinstance(self.calibration_batches, int) or \
                self.calibration_batches < 0:
            raise ValueError(f"calibration_batches must be an int >= 0 (0: weight-only factors), "
                             f"got {self.calibration_batches!r}")
        exclude_filter(self.exclude)  # a bad regex is one error now; one matching no layer when the run starts
        if self.subset is not None and (not isinstance(self.subset, int) or self.subset < 1):
            raise ValueError(f"subset must be a positive int, got {self.subset!r}")
        if self.channels_last not in (None, True, False):
            raise ValueError(f"channels_last must be True, False or None (auto), got {self.channels_last!r}")
        as_profiler(self.keep_if_faster)  # True, False or a fc.Profiler
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

    def build_events(self) -> tuple[Event, ...]:
        """Fresh event objects for one run: ``decompose_at``'s, ``reconstruct_at``'s, then copies of
        ``events`` (a run's events hold its state; the config's stay untouched)."""
        built: list[Event] = []
        if self.decompose_at is not None:
            built.append(Decompose(self.decompose_at))
        if self.reconstruct_at is not None:
            built.append(Reconstruct(self.reconstruct_at))
        return tuple(built) + copy.deepcopy(self.events)

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.lr, self.schedule_epochs or self.epochs, tuple(self.milestones))

    def as_dict(self) -> dict[str, Any]:
        """Plain values (methods as their repr), for checkpoints and logs."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["methods"] = [repr(m) for m in self.methods]
        out["milestones"], out["exclude"] = list(self.milestones), list(self.exclude)
        del out["keep_if_faster"]
        if as_profiler(self.keep_if_faster) is not None:  # absent when off, like events; the clock is no setting
            out["keep_if_faster"] = True
        del out["events"]
        if not self.calibration_batches:  # absent when 0: checkpoints from before it resume unchanged
            del out["calibration_batches"]
        if self.events:  # absent when empty: checkpoints from before events resume unchanged
            out["events"] = [e.describe() for e in self.events]
        return out


# Settings that do not change a run's results: a resumed run may change them.
RUNTIME_ONLY = ("data_dir", "device", "workers")
# Settings that only shape a decomposition: irrelevant to a run that never decomposes, so its
# checkpoint serves runs with other such settings (a resumed original, original-then-dec+E with
# another --rank started from it).
DECOMPOSITION_ONLY = ("methods", "first_conv", "exclude", "calibration_batches", "keep_if_faster")


def uses_methods(config: dict[str, Any]) -> bool:
    """Whether a run (its ``as_dict()``, e.g. from a checkpoint) has an event that decomposes with
    the decomposition settings."""
    return config.get("decompose_at") is not None or any(e.get("uses_methods") for e in config.get("events", []))


def first_event_epoch(config: dict[str, Any]) -> Optional[int]:
    """The first epoch before which a run (its ``as_dict()``) has an event act; None without events."""
    epochs = [config.get("decompose_at"), config.get("reconstruct_at")] + \
        [e.get("first_epoch") for e in config.get("events", [])]
    return min((e for e in epochs if e is not None), default=None)
