"""The settings every decomposing event owns: which methods, on which layers, from which data.

``Decompose``, ``ADMMPhase`` and ``FromScratch`` derive from ``Decomposing``, so each event carries
its own methods (two ``Decompose`` events of one run may use different ones) and the CLI gives
every decomposing event the run's ``--method``/``--rank``/``--first-conv``/``--exclude``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from factorch.methods import Method, Tucker2
from factorch.rank import EVBMF
from factorch.selection import exclude_filter, layer_filter
from factorch.surgery import FilterFn
from factorch.training.events.base import Event, Option, RunContext

# Elhoushi et al. 2019, section 3: Tucker-2 with EVBMF ranks (Nakajima et al. 2013)
DEFAULT_METHODS: tuple[Method, ...] = (Tucker2(EVBMF()),)

CALIBRATION_BATCHES = Option(
    "calibration_batches", "--calibration-batches", type=int, metavar="N",
    help="data-aware factors and ranks from N training batches (inputs only, a seeded draw) at every decomposition, "
         "ADMM's included (default 0: weight-only)")


def check_batches(value: Any) -> None:
    """``calibration_batches`` must be an int >= 0 (0: weight-only factors)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"calibration_batches must be an int >= 0 (0: weight-only factors), got {value!r}")


def calibration(run: RunContext, batches: int) -> Optional[list]:
    """Rank 0's calibration batches (the other ranks follow rank 0's decomposition)."""
    return run.calibration(batches) if run.dist.is_main else None


@dataclass(kw_only=True)
class Decomposing(Event):
    """Base of the events that decompose the model. ``methods``: ``fc.decompose_``'s list (the
    first method that handles a layer usefully); ``first_conv``: decompose the model's first conv
    too (Elhoushi et al. 2019 leave it dense: EVBMF on 3 input channels is noise); ``exclude``:
    regexes (full match) of layer names left dense."""

    methods: tuple[Method, ...] = DEFAULT_METHODS
    first_conv: bool = False
    exclude: tuple[str, ...] = ()

    options = (
        Option("first_conv", "--first-conv", "decompose the first conv too (the paper leaves it dense)",
               switch=True),
        Option("exclude", "--exclude", "leave layers matching REGEX dense (repeatable)", metavar="REGEX"),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.methods, tuple) or not self.methods or \
                not all(isinstance(m, Method) for m in self.methods):
            raise ValueError(f"methods must be a non-empty tuple of method configs, got {self.methods!r}")
        if not isinstance(self.first_conv, bool):
            raise ValueError(f"first_conv must be True or False, got {self.first_conv!r}")
        if not isinstance(self.exclude, tuple) or not all(isinstance(r, str) for r in self.exclude):
            raise ValueError(f"exclude must be a tuple of regexes, got {self.exclude!r}")
        exclude_filter(self.exclude)  # a bad regex is one error now; one matching no layer when the run starts

    def filter_fn(self, model: nn.Module) -> FilterFn:
        """The layers its settings leave dense (first conv, ``exclude``); an ``exclude`` regex
        that matches no layer of ``model`` is an error."""
        return layer_filter(self.first_conv, self.exclude, model)
