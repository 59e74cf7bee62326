"""What a training event is: an object the run calls at fixed points, with its own checkpoint state.

In the style of llm-compressor's modifiers and torchao's QAT steps: the run loop
(``training/run.py``) calls every event of ``TrainConfig.build_events()`` at the same points and
knows none of them by name, so a new event is one class here -- the loop, the checkpoints and DDP
need no change. Per run, for each event in order:

    begin(run, first_epoch)    once, before the first epoch this process trains (fresh or resumed),
                               before the run directory exists: bad input leaves nothing behind
    load_state_dict(state)     when resuming: the state ``state_dict`` gave at the checkpoint
    before_epoch(epoch, run)   may change ``run.model`` in place; returns a ``Change`` when it
                               changed the architecture (the loop then rebuilds the optimizer, the
                               DDP wrapper and the counts, and measures the accuracy right after)
    loss()                     every batch: a term added to the training loss, or None
    after_step()               after every optimizer step
    metrics()                  after the epoch: entries for its row of ``metrics.jsonl``
    summary(metrics)           those entries in short, appended to the epoch's log line
    state_dict()               after the epoch: plain data (``weights_only``-loadable) for the checkpoint

Under DDP every rank calls the same hooks at the same points; an event keeps every rank identical
(rank 0 decides and broadcasts). Events are dataclasses: their fields are the settings (compared on
resume, written to the checkpoint's config by ``describe``); run-time state lives in private
attributes. ``TrainConfig.build_events()`` gives each run fresh copies.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from factorch.report import Report
from factorch.surgery import FilterFn
from factorch.distributed import Distributed

if TYPE_CHECKING:
    from factorch.training.config import TrainConfig


@dataclass
class Change:
    """A change of architecture: ``kind`` ("decompose" | "reconstruct" | ...), the layers changed,
    the layers left dense with their reasons, (on rank 0, decompositions) the full report, and a
    ``note`` for the log (e.g. a warning)."""

    kind: str
    changed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    report: Optional[Report] = None
    note: Optional[str] = None

    def record(self) -> dict[str, Any]:
        """JSON-able summary for the metrics log."""
        return {"kind": self.kind, "changed": len(self.changed), "layers": self.changed, "skipped": self.skipped}


@dataclass
class RunContext:
    """What an event may use: the run's settings, the (unwrapped) model it changes in place, an
    example input (batch 1, for MACs), the process group, the log and the training set (for
    calibration batches)."""

    cfg: "TrainConfig"
    model: nn.Module
    example: torch.Tensor
    dist: Distributed
    log: Callable[[str], None]
    train_set: Optional[Dataset] = None

    def calibration(self) -> Optional[list[torch.Tensor]]:
        """``cfg.calibration_batches`` batches of training inputs (no labels) for data-aware factors
        and ranks, or None (weight-only). The same examples whenever it is called (a seeded draw),
        without moving the global RNG that orders and augments the training data: a resumed run
        decomposes exactly as an uninterrupted one."""
        n = self.cfg.calibration_batches
        if not n or self.train_set is None:
            return None
        with torch.random.fork_rng(devices=[]):  # augmentation draws from the global RNG: seeded here, restored after
            torch.manual_seed(self.cfg.seed + 1)
            order = torch.randperm(len(self.train_set))
            picks = order[:n * self.cfg.batch_size].tolist()
            size = self.cfg.batch_size
            return [torch.stack([self.train_set[i][0] for i in picks[k:k + size]]).to(self.example.device)
                    for k in range(0, len(picks), size)]

    def filter_fn(self) -> FilterFn:
        """The layers the run's decomposition settings leave dense (first conv, ``exclude``)."""
        from factorch.selection import layer_filter

        return layer_filter(self.cfg.first_conv, self.cfg.exclude, self.model)


class Event:
    """Base of every training event: each hook does nothing until a subclass says otherwise.

    ``kind`` names the event in records and logs; ``uses_methods``: whether the run's
    decomposition settings (``methods``, ``first_conv``, ``exclude``) shape what it does (a run
    without such an event may resume under other decomposition settings)."""

    kind: ClassVar[str] = ""
    uses_methods: ClassVar[bool] = False

    # ---- when it acts (validated with the run's settings) ---------------------------------------
    def changes(self) -> tuple[tuple[int, str], ...]:
        """``(epoch, kind)`` of each change of architecture it makes (before that 0-based epoch)."""
        return ()

    @property
    def first_epoch(self) -> int:
        """The first epoch before which it acts (a run started from another run's checkpoint must
        not have passed it); by default its first change, or 0."""
        return min((epoch for epoch, _ in self.changes()), default=0)

    @property
    def label(self) -> str:
        """How the user set it, for error messages (e.g. ``decompose_at=3``)."""
        return self.kind

    def validate(self, cfg: "TrainConfig", events: Sequence["Event"]) -> None:
        """Raise one ``ValueError`` if it cannot act in a run of ``cfg`` with these ``events``."""

    def describe(self) -> dict[str, Any]:
        """Plain settings for the checkpoint's config (compared when resuming)."""
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                "first_epoch": self.first_epoch, "uses_methods": self.uses_methods}

    # ---- the run's hooks ------------------------------------------------------------------------
    def begin(self, run: RunContext, first_epoch: int) -> None:
        pass

    def before_epoch(self, epoch: int, run: RunContext) -> Optional[Change]:
        return None

    def loss(self) -> Optional[torch.Tensor]:
        return None

    def after_step(self) -> None:
        pass

    def metrics(self) -> dict[str, Any]:
        return {}

    def summary(self, metrics: dict[str, Any]) -> str:
        return ""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
