"""Factorized layers trained from the first step (seed 001's Tucker, seed 003's TT): before epoch 0
every layer the run's methods handle is replaced by a freshly initialised factorized layer whose
implied dense weight has the variance of PyTorch's default init (``decompose_(...,
from_scratch=True)``), then the whole run trains the factors.

Ranks must be given (an int, a tuple, a fraction) or a ``Budget``: EVBMF, ``Energy`` and
``Tolerance`` read a trained weight's spectrum, and random weights look like noise (EVBMF gives
rank 0), so they are refused when the run is configured, before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Optional, Sequence

from factorch.api import decompose_
from factorch.rank import Budget
from factorch.rank.rules import RankRule
from factorch.registry import RULES_NEED_WEIGHTS
from factorch.training.events.architecture import decomposed_on_main
from factorch.training.events.base import Change, Event, RunContext

if TYPE_CHECKING:
    from factorch.training.config import TrainConfig


@dataclass
class FromScratch(Event):
    """Factorize the model before its first step with fresh factors (``--factorized-from-scratch``)."""

    kind: ClassVar[str] = "from_scratch"
    uses_methods: ClassVar[bool] = True

    def changes(self) -> tuple[tuple[int, str], ...]:
        return ((0, "decompose"),)

    @property
    def label(self) -> str:
        return "factorized_from_scratch"

    def validate(self, cfg: "TrainConfig", events: Sequence[Event]) -> None:
        for method in cfg.methods:
            if isinstance(method.rank, RankRule) and not isinstance(method.rank, Budget):
                raise ValueError(f"factorized from scratch: {method!r}'s rank {method.rank!r} {RULES_NEED_WEIGHTS}")

    def begin(self, run: RunContext, first_epoch: int) -> None:
        if first_epoch == 0:
            run.filter_fn()  # an --exclude that matches no layer fails before the run directory exists

    def before_epoch(self, epoch: int, run: RunContext) -> Optional[Change]:
        if epoch != 0:
            return None
        keep = run.filter_fn()
        return decomposed_on_main(run.model, run.dist, lambda: decompose_(
            run.model, list(run.cfg.methods), filter_fn=keep, example_input=run.example, from_scratch=True))
