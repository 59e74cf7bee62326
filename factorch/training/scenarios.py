"""The papers' scenarios as strings: ``original``, ``dec@K``, ``dec@K+rec@M``, ``admm@K``,
``original-then-dec+E``.

* ``original``: dense for all the epochs;
* ``dec@K``: dense for K epochs, decomposed for the rest (seed 000, Tables 1-3 "Dec. @ K");
* ``dec@K+rec@M``: as dec@K, back to the dense architecture after epoch M ("Dec. @ K Rec. @ M");
* ``admm@K``: low-rank ADMM training for K epochs, then decomposed at the same ranks and trained
  on (seed 002, Yin et al. 2021);
* ``original-then-dec+E``: the full original run, then decomposed and trained E more epochs at the
  schedule's final LR ("Original then Dec.", Table 1 last row).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Optional

from factorch.training.config import TrainConfig
from factorch.training.events import ADMMPhase, Event

FORMS = "original, dec@K, dec@K+rec@M, admm@K, original-then-dec+E"
_PATTERNS = (  # -> (decompose_at, reconstruct_at, admm_until, extra_epochs)
    (re.compile(r"original"), lambda m: (None, None, None, 0)),
    (re.compile(r"dec@(\d+)"), lambda m: (int(m[1]), None, None, 0)),
    (re.compile(r"dec@(\d+)\+rec@(\d+)"), lambda m: (int(m[1]), int(m[2]), None, 0)),
    (re.compile(r"admm@(\d+)"), lambda m: (None, None, int(m[1]), 0)),
    (re.compile(r"original-then-dec\+(\d+)"), lambda m: (None, None, None, int(m[1]))),
)


@dataclass(frozen=True)
class Scenario:
    """One scenario of an experiment; ``config(base)`` is its run's settings."""

    name: str
    decompose_at: Optional[int] = None
    reconstruct_at: Optional[int] = None
    extra_epochs: int = 0  # original-then-dec+E: E
    events: tuple[Event, ...] = ()  # admm@K: (ADMMPhase(K),)

    @property
    def slug(self) -> str:
        """A directory name: ``dec@10+rec@190`` -> ``dec10-rec190``."""
        return self.name.replace("@", "").replace("+", "-")

    @property
    def after_original(self) -> bool:
        return self.extra_epochs > 0

    def config(self, base: TrainConfig) -> TrainConfig:
        if self.after_original:
            return dataclasses.replace(base, epochs=base.epochs + self.extra_epochs, schedule_epochs=base.epochs,
                                       decompose_at=base.epochs, reconstruct_at=None, events=())
        return dataclasses.replace(base, decompose_at=self.decompose_at, reconstruct_at=self.reconstruct_at,
                                   events=self.events)


def parse_scenario(text: str, epochs: int, admm: Callable[[int], Event] = ADMMPhase) -> Scenario:
    """``Scenario`` for ``text``; ``ValueError`` naming the scenario and the accepted forms.
    ``admm(K)`` builds the event of ``admm@K`` (e.g. ``functools.partial(ADMMPhase, rho=1e-2)``)."""
    t = text.strip().lower()
    for pattern, fields in _PATTERNS:
        m = pattern.fullmatch(t)
        if m:
            k, rec, until, extra = fields(m)
            break
    else:
        raise ValueError(f"scenario {text!r} not understood; use {FORMS}")
    if k is not None and not 0 <= k < epochs:
        raise ValueError(f"scenario {text!r}: the decomposition epoch {k} must be in [0, {epochs - 1}] for {epochs} epochs")
    if rec is not None and not k < rec < epochs:
        raise ValueError(f"scenario {text!r}: the reconstruction epoch {rec} must be in [{k + 1}, {epochs - 1}]")
    if until is not None and not 1 <= until < epochs:
        raise ValueError(f"scenario {text!r}: the ADMM end epoch {until} must be in [1, {epochs - 1}] for {epochs} epochs")
    if m.re.pattern.startswith("original-then") and extra < 1:
        raise ValueError(f"scenario {text!r}: E must be at least 1 epoch")
    return Scenario(t, k, rec, extra, (admm(until),) if until is not None else ())


def parse_scenarios(text: str, epochs: int, admm: Callable[[int], Event] = ADMMPhase) -> list[Scenario]:
    """Comma list of scenarios, validated, duplicates refused."""
    items = [s for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"no scenario given; use a comma list of {FORMS}")
    scenarios = [parse_scenario(s, epochs, admm) for s in items]
    names = [s.name for s in scenarios]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"scenario(s) given twice: {', '.join(dupes)}")
    return scenarios
