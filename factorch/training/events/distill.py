"""Distillation from the dense model the run started from (Hinton et al. 2015): ``--distill``,
scenario ``distill``.

While the (compressed) model trains, every batch's loss gains ``weight * distillation_loss(student,
teacher)``: the teacher is the model the run started from (its ``weights``: the trained dense
model of ``factorch compress``), rebuilt from the same file in every process and on resume,
frozen (eval mode, no gradients, not in the optimizer). No labels are needed for that term. It
works with the other events (a decomposition, ADMM) and under DDP (each rank distils its own
shard of the batch from its own identical teacher).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence

import torch
from torch import nn

from factorch.measure.latency import autocast
from factorch.training.distillation import check_temperature, distillation_loss
from factorch.training.events.base import Event, Option, RunContext, register
from factorch.training.loop import Batch


@register
@dataclass
class Distill(Event):
    """Add ``weight * T^2 KL(p_teacher^T || p_student^T)`` to every batch's loss, ``T`` the
    ``temperature``; the teacher is the run's starting model."""

    weight: float = 1.0
    temperature: float = 4.0

    kind: ClassVar[str] = "distill"
    token: ClassVar[str] = "distill"
    takes_epoch: ClassVar[bool] = False
    flag: ClassVar[str] = "--distill"
    flag_help: ClassVar[str] = ("learn from the dense model the run starts from (--weights): its softened outputs "
                                "in every batch's loss (Hinton et al. 2015)")
    options = (Option("temperature", "--distill-temperature", "softmax temperature T (default 4)", type=float,
                      metavar="T"),
               Option("weight", "--distill-weight", "weight of the distillation term (default 1)", type=float,
                      metavar="W"))

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or \
                not math.isfinite(self.weight) or self.weight <= 0:
            raise ValueError(f"distillation weight must be a positive number, got {self.weight!r}")
        self._teacher: Optional[nn.Module] = None
        self._amp: Optional[tuple[torch.device, bool]] = None
        self._sum = 0.0
        self._steps = 0
        self._dist = None

    def validate(self, epochs: int, events: Sequence[Event]) -> None:
        if sum(isinstance(e, Distill) for e in events) > 1:
            raise ValueError("one distillation per run")

    def begin(self, run: RunContext, first_epoch: int) -> None:
        self._teacher = run.teacher()  # refused here, before anything is written, without --weights
        self._amp = (run.example.device, run.amp)
        self._dist = run.dist

    def before_epoch(self, epoch: int, run: RunContext) -> None:
        self._sum, self._steps = 0.0, 0
        return None

    def loss(self, batch: Batch) -> Optional[torch.Tensor]:
        with torch.no_grad(), autocast(*self._amp):
            teacher = self._teacher(batch.inputs)             # (B, classes)
        term = self.weight * distillation_loss(batch.outputs, teacher, self.temperature)
        self._sum += float(term.detach())
        self._steps += 1
        return term

    def metrics(self) -> dict[str, Any]:
        """The epoch's mean distillation term over every rank's steps (the same on every rank)."""
        total, steps = self._dist.sum([self._sum, self._steps])
        return {"distill_loss": total / steps} if steps else {}

    def summary(self, metrics: dict[str, Any]) -> str:
        return f"  distill {metrics['distill_loss']:.4f}" if metrics else ""
