"""The architecture changes of seed 000 (Elhoushi et al. 2019): decompose before epoch k,
reconstruct the dense layers before epoch m.

Under DDP the decomposition is computed once, on rank 0: the other ranks receive its
factorization spec, build the same (empty) structure with ``io.apply_spec`` and get every
parameter and buffer from rank 0, so all ranks end with identical weights whatever they held.
Every layer left dense is named with its reason in the change record (EVBMF gives rank 0 on
barely-trained weights, methods.md 2.1 issue 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Optional, Sequence

import torch
from torch import nn

from factorch.api import decompose_, reconstruct_
from factorch.io import apply_spec, factorization_spec
from factorch.layers.base import FactorizedLayer
from factorch.methods import Method
from factorch.report import Report
from factorch.surgery import exclude_filter, walk
from factorch.training.distributed import Distributed
from factorch.training.events.base import Change, Event, RunContext

if TYPE_CHECKING:
    from factorch.training.config import TrainConfig

NOTHING_DECOMPOSED = ("warning: no layer was decomposed (EVBMF gives rank 0 on barely-trained weights); "
                      "decompose later or use --rank evbmf:W / a fraction")


def layer_filter(first_conv: bool, exclude: Sequence[str], model: nn.Module) -> Callable[[nn.Module, str], bool]:
    """``filter_fn`` for ``decompose_``: drop layers matching an ``exclude`` regex (a regex that
    matches no layer of ``model`` is an error: ``surgery.exclude_filter``) and, unless
    ``first_conv``, the model's first Conv2d (the paper leaves it dense)."""
    excluded = exclude_filter(exclude, model)
    first = None if first_conv else next((n for n, m in walk(model) if isinstance(m, nn.Conv2d)), None)

    def keep(module: nn.Module, name: str) -> bool:
        return name != first and (excluded is None or excluded(module, name))

    return keep


def decomposed_on_main(model: nn.Module, dist: Distributed, decompose: Callable[[], Report]) -> Change:
    """Run ``decompose`` (which changes the unwrapped ``model`` in place and returns its report) on
    rank 0 only, then make every rank identical: the others build rank 0's structure from its
    factorization spec and receive every parameter and buffer."""
    report, spec = None, None
    if dist.is_main:
        report = decompose()
        spec = factorization_spec(model)
    spec = dist.broadcast_object(spec)
    if not dist.is_main:
        have = {name for name, m in walk(model) if isinstance(m, FactorizedLayer)}
        apply_spec(model, [entry for entry in spec if entry["name"] not in have])
    dist.broadcast_model(model)
    skipped = {r.name: r.skipped for r in report.skipped} if report is not None else {}
    changed = [r.name for r in report.decomposed] if report is not None else []
    skipped, changed = dist.broadcast_object((skipped, changed))
    return Change("decompose", changed, skipped, report, None if changed else NOTHING_DECOMPOSED)


def decompose_event(model: nn.Module, methods: Sequence[Method], example_input: torch.Tensor,
                    dist: Distributed, first_conv: bool = False, exclude: Sequence[str] = (),
                    calibration: Optional[Sequence[torch.Tensor]] = None) -> Change:
    """``decompose_`` the (unwrapped) ``model`` in place, on rank 0, and make every rank identical;
    ``calibration``: input batches for data-aware factors and ranks (rank 0's)."""
    keep = layer_filter(first_conv, exclude, model)
    return decomposed_on_main(model, dist, lambda: decompose_(model, list(methods), filter_fn=keep,
                                                                  example_input=example_input, calibration=calibration))


def reconstruct_event(model: nn.Module, dist: Distributed) -> Change:
    """``reconstruct_`` every factorized layer (lossless), identical on every rank."""
    names = reconstruct_(model)
    dist.broadcast_model(model)
    return Change("reconstruct", names)


def _epoch_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass
class Decompose(Event):
    """``decompose_`` the model with the run's methods before epoch ``at`` (after ``at`` dense
    epochs; ``TrainConfig(decompose_at=k)``, ``--decompose-at K``, scenario ``dec@K``)."""

    at: int
    kind: ClassVar[str] = "decompose"
    uses_methods: ClassVar[bool] = True

    def changes(self) -> tuple[tuple[int, str], ...]:
        return ((self.at, "decompose"),)

    @property
    def label(self) -> str:
        return f"decompose_at={self.at}"

    def validate(self, cfg: "TrainConfig", events: Sequence[Event]) -> None:
        if not _epoch_in(self.at, 0, cfg.epochs - 1):
            raise ValueError(f"decompose_at must be an epoch in [0, {cfg.epochs - 1}], got {self.at!r}")

    def begin(self, run: RunContext, first_epoch: int) -> None:
        if first_epoch <= self.at:
            run.filter_fn()  # an --exclude that matches no layer fails now, not after `at` epochs

    def before_epoch(self, epoch: int, run: RunContext) -> Optional[Change]:
        if epoch != self.at:
            return None
        return decompose_event(run.model, run.cfg.methods, run.example, run.dist, run.cfg.first_conv, run.cfg.exclude,
                               run.calibration() if run.dist.is_main else None)


@dataclass
class Reconstruct(Event):
    """Back to the dense architecture before epoch ``at`` (``reconstruct_at=m``, ``dec@K+rec@M``)."""

    at: int
    kind: ClassVar[str] = "reconstruct"

    def changes(self) -> tuple[tuple[int, str], ...]:
        return ((self.at, "reconstruct"),)

    @property
    def label(self) -> str:
        return f"reconstruct_at={self.at}"

    def validate(self, cfg: "TrainConfig", events: Sequence[Event]) -> None:
        decompositions = [epoch for e in events for epoch, kind in e.changes() if kind == "decompose"]
        if not decompositions:
            raise ValueError("reconstruct_at needs decompose_at (or an ADMM phase) before it: nothing to "
                             "reconstruct otherwise")
        k = min(decompositions)
        if not _epoch_in(self.at, k + 1, cfg.epochs - 1):
            raise ValueError(f"reconstruct_at must be an epoch in [{k + 1}, {cfg.epochs - 1}] "
                             f"(after the decomposition at {k}), got {self.at!r}")

    def before_epoch(self, epoch: int, run: RunContext) -> Optional[Change]:
        return reconstruct_event(run.model, run.dist) if epoch == self.at else None
