"""The architecture changes of seed 000 (Elhoushi et al. 2019): decompose before epoch k,
reconstruct the dense layers before epoch m.

Under DDP the decomposition is computed once, on rank 0: the other ranks receive its
factorization spec, build the same (empty) structure with ``io.apply_spec`` and get every
parameter and buffer from rank 0, so all ranks end with identical weights whatever they held.
Every layer left dense is named with its reason in the change record (EVBMF gives rank 0 on
barely-trained weights, methods.md 2.1 issue 2; or, with ``keep_if_faster``, the factorized form
was not faster at the training batch: both measured times are in the reason).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Optional, Sequence

import torch
from torch import nn

from factorch.api import decompose_, reconstruct_
from factorch.io import apply_spec, factorization_spec
from factorch.layers.base import FactorizedLayer
from factorch.methods import Method
from factorch.measure.latency import Profiler, as_profiler
from factorch.report import Report
from factorch.selection import layer_filter
from factorch.surgery import walk
from factorch.distributed import Distributed
from factorch.training.events.base import Change, Event, RunContext
from factorch.training.loop import uses_channels_last

if TYPE_CHECKING:
    from factorch.training.config import TrainConfig

NOTHING_DECOMPOSED = ("warning: no layer was decomposed (EVBMF gives rank 0 on barely-trained weights); "
                      "decompose later or use --rank evbmf:W / a fraction")
NOTHING_FASTER = ("warning: no layer was decomposed: no factorized layer was faster here at the training batch "
                  "(keep_if_faster; --no-keep-if-faster decomposes anyway)")
KEPT_DENSE = "kept dense"  # how decompose_'s report starts the reason of a layer keep_if_faster left dense
# the event's clock: fewer runs than fc.Profiler()'s defaults (the timing is part of the run's time);
# interleaved, medians, so a busy machine hits dense and factorized alike
TRAINING_TIMING = Profiler(warmup=2, runs=5)


def training_profiler(keep_if_faster: bool | Profiler, batch: int, channels_last: bool, amp: bool
                      ) -> Optional[Profiler]:
    """How the decomposition event times a layer (None: ``keep_if_faster`` off): forward+backward
    (a training step's cost) at ``batch`` (the per-process training batch, unless the given
    profiler sets one), in the run's memory format and AMP setting; a ``fc.Profiler`` given
    supplies the clock, warm-up, runs and threads, ``True`` means ``TRAINING_TIMING``."""
    given = as_profiler(keep_if_faster)
    if given is None:
        return None
    base = TRAINING_TIMING if keep_if_faster is True else given
    return dataclasses.replace(base, batch=base.batch or batch, backward=True, channels_last=channels_last, amp=amp)


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
    return Change("decompose", changed, skipped, report, None if changed else _nothing_decomposed(skipped))


def _nothing_decomposed(skipped: dict[str, str]) -> str:
    timed = [reason for reason in skipped.values() if reason.startswith(KEPT_DENSE)]
    return NOTHING_FASTER if timed else NOTHING_DECOMPOSED


def decompose_event(model: nn.Module, methods: Sequence[Method], example_input: torch.Tensor,
                    dist: Distributed, first_conv: bool = False, exclude: Sequence[str] = (),
                    calibration: Optional[Sequence[torch.Tensor]] = None,
                    keep_if_faster: Optional[Profiler] = None) -> Change:
    """``decompose_`` the (unwrapped) ``model`` in place, on rank 0, and make every rank identical;
    ``calibration``: input batches for data-aware factors and ranks (rank 0's).

    ``keep_if_faster`` (a profiler, see ``training_profiler``): rank 0 times each candidate and
    keeps the layers whose factorized form is not faster dense; the others follow its spec."""
    keep = layer_filter(first_conv, exclude, model)
    return decomposed_on_main(model, dist, lambda: decompose_(model, list(methods), filter_fn=keep,
                                                                  example_input=example_input, calibration=calibration,
                                                                  keep_if_faster=keep_if_faster or False))


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
    epochs; ``TrainConfig(decompose_at=k)``, ``--decompose-at K``, scenario ``dec@K``); with the
    run's ``keep_if_faster``, only the layers measured faster factorized (``training_profiler``)."""

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
        cfg = run.cfg
        timing = training_profiler(cfg.keep_if_faster, cfg.batch_size // run.dist.world,
                                   uses_channels_last(cfg.channels_last, run.model, run.dist.device), cfg.amp)
        return decompose_event(run.model, cfg.methods, run.example, run.dist, cfg.first_conv, cfg.exclude,
                               calibration=run.calibration() if run.dist.is_main else None, keep_if_faster=timing)


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
