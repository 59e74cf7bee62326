"""Factorized layers trained from the first step (Tucker with learned factors and a factorized
spatial mode; TT layers, Novikov et al. 2015, section 5): before epoch 0 every layer the event's
methods handle is replaced by a freshly initialised factorized layer whose implied dense weight has
the variance of PyTorch's default init (``decompose_(..., from_scratch=True)``), then the whole run
trains the factors. ``--factorized-from-scratch``, scenario ``scratch``.

Ranks must be given (an int, a tuple, a fraction) or a ``Budget``: EVBMF, ``Energy`` and
``Tolerance`` read a trained weight's spectrum, and random weights look like noise (EVBMF gives
rank 0), so they are refused when the run is configured, before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import torch

from factorch.api import decompose_, plan
from factorch.measure.bench import require_decomposed
from factorch.rank import Budget
from factorch.rank.rules import RankRule
from factorch.registry import RULES_NEED_WEIGHTS
from factorch.training.events.architecture import decomposed_on_main
from factorch.training.events.base import Change, Event, RunContext, register
from factorch.training.events.decomposing import Decomposing


@register
@dataclass
class FromScratch(Decomposing):
    """Factorize the model before its first step with fresh factors of its methods' ranks."""

    kind: ClassVar[str] = "from_scratch"
    token: ClassVar[str] = "scratch"
    takes_epoch: ClassVar[bool] = False
    flag: ClassVar[str] = "--factorized-from-scratch"
    flag_help: ClassVar[str] = ("factorize every layer the --method/--rank handle before the first step, with fresh "
                                "factors (ranks: an int, a tuple, a fraction or budget:...; not evbmf/energy/tol)")

    def changes(self) -> tuple[tuple[int, str], ...]:
        return ((0, "decompose"),)

    @property
    def label(self) -> str:
        return "factorized_from_scratch"

    def validate(self, epochs: int, events: Sequence[Event]) -> None:
        for method in self.methods:
            if isinstance(method.rank, RankRule) and not isinstance(method.rank, Budget):
                raise ValueError(f"factorized from scratch: {method!r}'s rank {method.rank!r} {RULES_NEED_WEIGHTS}")

    def begin(self, run: RunContext, first_epoch: int) -> None:
        """Before the run directory exists: refuse settings that factorize no layer (training
        the dense model instead would be a silent no-op) or that ``decompose_`` would refuse."""
        if first_epoch == 0:
            with torch.random.fork_rng(devices=[]):  # fresh factors draw from the RNG: the run's draws stay as they were
                report = plan(run.model, list(self.methods), filter_fn=self.filter_fn(run.model),
                              example_input=run.example, from_scratch=True)
            require_decomposed(report, "training from scratch would train the dense model; nothing was written")

    def before_epoch(self, epoch: int, run: RunContext) -> Optional[Change]:
        if epoch != 0:
            return None
        keep = self.filter_fn(run.model)
        return decomposed_on_main(run.model, run.dist, lambda: decompose_(
            run.model, list(self.methods), filter_fn=keep, example_input=run.example, from_scratch=True))
