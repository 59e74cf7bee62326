"""The architecture changes of Elhoushi et al. 2019 (section 3): decompose before epoch k (``dec@K``,
``--decompose-at K``), reconstruct the dense layers before epoch m (``rec@M``, ``--reconstruct-at M``).

Under DDP the decomposition is computed once, on rank 0: the other ranks receive its
factorization spec, build the same (empty) structure with ``io.apply_spec`` and get every
parameter and buffer from rank 0, so all ranks end with identical weights whatever they held.
Every layer left dense is named with its reason in the change record (EVBMF gives rank 0 on
barely-trained weights: they look like noise, Nakajima et al. 2013; or, with ``keep_if_faster``, the factorized form
was not faster at the training batch: both measured times are in the reason).
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional, Sequence

import torch
from torch import nn

from factorch.api import check, decompose_, reconstruct_
from factorch.io import apply_spec, factorization_spec
from factorch.layers.base import FactorizedLayer
from factorch.measure.latency import Profiler, as_profiler
from factorch.methods import Method
from factorch.report import Report
from factorch.distributed import Distributed
from factorch.selection import layer_filter
from factorch.surgery import walk
from factorch.training.events.base import Change, Event, Option, RunContext, register
from factorch.training.events.decomposing import CALIBRATION_BATCHES, Decomposing, calibration, check_batches

RANK_ZERO_HINT = "EVBMF gives rank 0 on barely-trained weights: decompose later or use --rank evbmf:W / a fraction"
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
    """The warning when a decomposition changed no layer: the reasons it was given, most common
    first (and the cure for rank 0 only where a rule found rank 0)."""
    if any(reason.startswith(KEPT_DENSE) for reason in skipped.values()):
        return NOTHING_FASTER
    reasons = Counter(skipped.values()).most_common()
    said = "; ".join(f"{n} x {reason}" for reason, n in reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
    hint = f" ({RANK_ZERO_HINT})" if any("rank 0" in reason for reason, _ in reasons) else ""
    return f"warning: no layer was decomposed: {said or 'the model has no layer a method handles'}{hint}"


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


def epoch_in(value: object, low: int, high: int) -> bool:
    """Whether ``value`` is an int epoch in ``[low, high]``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


KEEP_IF_FASTER = Option(
    "keep_if_faster", "--keep-if-faster", switch=True, cli_default=True,
    help="at a decomposition, time each layer dense and factorized (forward+backward at the training batch) and "
         "keep it dense where factorizing is not faster (default on)")


@register
@dataclass
class Decompose(Decomposing):
    """``decompose_`` the model with its ``methods`` before epoch ``at`` (after ``at`` dense
    epochs). ``calibration_batches``: that many training batches (inputs only) for data-aware
    factors and ranks (0: weight-only). ``keep_if_faster`` (True or a ``fc.Profiler``): time each
    candidate layer dense and factorized, forward+backward at the per-process training batch, its
    real input size, the run's memory format and AMP setting, and keep it dense where the
    factorized form is not faster (``training_profiler``). Off by default, so a run's result is a
    function of its settings and seed alone; ``factorch train`` turns it on. The decision is made
    once, on rank 0, and the checkpoint holds the architecture it chose: a resumed run continues
    it exactly."""

    at: int
    calibration_batches: int = field(default=0, kw_only=True)
    keep_if_faster: bool | Profiler = field(default=False, kw_only=True)

    kind: ClassVar[str] = "decompose"
    token: ClassVar[str] = "dec"
    flag: ClassVar[str] = "--decompose-at"
    flag_help: ClassVar[str] = "decompose after K epochs"
    options = (CALIBRATION_BATCHES, KEEP_IF_FASTER)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_batches(self.calibration_batches)
        as_profiler(self.keep_if_faster)  # True, False or a fc.Profiler

    def changes(self) -> tuple[tuple[int, str], ...]:
        return ((self.at, "decompose"),)

    @property
    def label(self) -> str:
        return f"decompose_at={self.at}"

    def describe(self) -> dict:
        return {**super().describe(), "keep_if_faster": as_profiler(self.keep_if_faster) is not None}

    def validate(self, epochs: int, events: Sequence[Event]) -> None:
        if not epoch_in(self.at, 0, epochs - 1):
            raise ValueError(f"decompose_at must be an epoch in [0, {epochs - 1}], got {self.at!r}")

    def begin(self, run: RunContext, first_epoch: int) -> None:
        if first_epoch <= self.at:  # bad settings fail now, not after `at` epochs
            check(run.model, list(self.methods), filter_fn=self.filter_fn(run.model), example_input=run.example)

    def before_epoch(self, epoch: int, run: RunContext) -> Optional[Change]:
        if epoch != self.at:
            return None
        timing = training_profiler(self.keep_if_faster, run.process_batch, run.channels_last, run.amp)
        return decompose_event(run.model, self.methods, run.example, run.dist, self.first_conv, self.exclude,
                               calibration=calibration(run, self.calibration_batches), keep_if_faster=timing)


@register
@dataclass
class Reconstruct(Event):
    """Back to the dense architecture before epoch ``at``, from the current (trained) factors,
    losslessly (``fc.reconstruct_``)."""

    at: int

    kind: ClassVar[str] = "reconstruct"
    token: ClassVar[str] = "rec"
    flag: ClassVar[str] = "--reconstruct-at"
    flag_help: ClassVar[str] = "back to the dense architecture after M epochs"

    def changes(self) -> tuple[tuple[int, str], ...]:
        return ((self.at, "reconstruct"),)

    @property
    def label(self) -> str:
        return f"reconstruct_at={self.at}"

    def validate(self, epochs: int, events: Sequence[Event]) -> None:
        decompositions = [epoch for e in events for epoch, kind in e.changes() if kind == "decompose"]
        if not decompositions:
            raise ValueError("reconstruct_at needs decompose_at (or an ADMM phase) before it: nothing to "
                             "reconstruct otherwise")
        k = min(decompositions)
        if not epoch_in(self.at, k + 1, epochs - 1):
            raise ValueError(f"reconstruct_at must be an epoch in [{k + 1}, {epochs - 1}] "
                             f"(after the decomposition at {k}), got {self.at!r}")

    def before_epoch(self, epoch: int, run: RunContext) -> Optional[Change]:
        return reconstruct_event(run.model, run.dist) if epoch == self.at else None
