"""The paper's scenarios as strings: ``original``, ``dec@K``, ``dec@K+rec@M``, ``original-then-dec+E``.

* ``original``: dense for all the epochs;
* ``dec@K``: dense for K epochs, decomposed for the rest (Tables 1-3 "Dec. @ K");
* ``dec@K+rec@M``: as dec@K, back to the dense architecture after epoch M ("Dec. @ K Rec. @ M");
* ``original-then-dec+E``: the full original run, then decomposed and trained E more epochs at the
  schedule's final LR ("Original then Dec.", Table 1 last row).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional

from factorch.training.config import TrainConfig

FORMS = "original, dec@K, dec@K+rec@M, original-then-dec+E"
_PATTERNS = (
    (re.compile(r"original"), lambda m: (None, None, 0)),
    (re.compile(r"dec@(\d+)"), lambda m: (int(m[1]), None, 0)),
    (re.compile(r"dec@(\d+)\+rec@(\d+)"), lambda m: (int(m[1]), int(m[2]), 0)),
    (re.compile(r"original-then-dec\+(\d+)"), lambda m: (None, None, int(m[1]))),
)


@dataclass(frozen=True)
class Scenario:
    """One scenario of an experiment; ``config(base)`` is its run's settings."""

    name: str
    decompose_at: Optional[int] = None
    reconstruct_at: Optional[int] = None
    extra_epochs: int = 0  # original-then-dec+E: E

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
                                       decompose_at=base.epochs, reconstruct_at=None)
        return dataclasses.replace(base, decompose_at=self.decompose_at, reconstruct_at=self.reconstruct_at)


def parse_scenario(text: str, epochs: int) -> Scenario:
    """``Scenario`` for ``text``; ``ValueError`` naming the scenario and the accepted forms."""
    t = text.strip().lower()
    for pattern, fields in _PATTERNS:
        m = pattern.fullmatch(t)
        if m:
            k, rec, extra = fields(m)
            break
    else:
        raise ValueError(f"scenario {text!r} not understood; use {FORMS}")
    if k is not None and not 0 <= k < epochs:
        raise ValueError(f"scenario {text!r}: the decomposition epoch {k} must be in [0, {epochs - 1}] for {epochs} epochs")
    if rec is not None and not k < rec < epochs:
        raise ValueError(f"scenario {text!r}: the reconstruction epoch {rec} must be in [{k + 1}, {epochs - 1}]")
    if m.re.pattern.startswith("original-then") and extra < 1:
        raise ValueError(f"scenario {text!r}: E must be at least 1 epoch")
    return Scenario(t, k, rec, extra)


def parse_scenarios(text: str, epochs: int) -> list[Scenario]:
    """Comma list of scenarios, validated, duplicates refused."""
    items = [s for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"no scenario given; use a comma list of {FORMS}")
    scenarios = [parse_scenario(s, epochs) for s in items]
    names = [s.name for s in scenarios]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"scenario(s) given twice: {', '.join(dupes)}")
    return scenarios
