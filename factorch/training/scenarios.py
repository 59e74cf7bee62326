"""Experiment scenarios as strings, spelled by the registered events (``training/events``).

A scenario is ``original`` (no event), ``original-then-dec+E``, or registered event tokens joined
by ``+``: ``dec@K``, ``dec@K+rec@M``, ``admm@K``, ``scratch``, ... (``Event.syntax``); ``@K`` is
an epoch, or ``@P%`` the fraction P of the run's epochs (rounded):

* ``original``: dense for all the epochs;
* ``dec@K``: dense for K epochs, decomposed for the rest (Elhoushi et al. 2019, Tables 1-3
  "Dec. @ K"); ``dec@K+rec@M``: back to the dense architecture after epoch M ("Dec. @ K Rec. @ M");
* ``admm@K``: low-rank ADMM training for K epochs, then decomposed at the same ranks and trained
  on (Yin et al. 2021);
* ``scratch``: factorized layers with fresh factors from the first step;
* ``original-then-dec+E``: the full original run, then decomposed and trained E more epochs at the
  schedule's final LR ("Original then Dec.", Elhoushi et al. 2019, Table 1 last row).

Every event a scenario names gets the experiment's ``settings`` (the decomposition settings and
any given option, e.g. ADMM's rho) where it has them: a dict for every event class, or a function
of the class giving its own (the CLI's: two classes may spell a setting of one name differently).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from factorch.training.config import TrainConfig
from factorch.training.events import EVENTS, Decompose, Event

Settings = Union[Mapping[str, Any], Callable[[type[Event]], Mapping[str, Any]], None]
AFTER_ORIGINAL = re.compile(r"original-then-dec\+(\d+)")
TOKEN = re.compile(r"([a-z][a-z0-9_]*)(?:@(\d+)(%?))?")


def forms() -> str:
    """The accepted forms, for messages and help."""
    return ", ".join(["original", *(cls.syntax() for cls in EVENTS.values()), "dec@K+rec@M", "original-then-dec+E"])


@dataclass(frozen=True)
class Scenario:
    """One scenario of an experiment: its ``events`` and, for original-then-dec+E, the ``extra_epochs``
    trained after the original's; ``config(base)`` is its run's settings."""

    name: str
    events: tuple[Event, ...] = ()
    extra_epochs: int = 0

    @property
    def slug(self) -> str:
        """A directory name: ``dec@10+rec@190`` -> ``dec10-rec190``, ``dec@5%`` -> ``dec5pct``."""
        return self.name.replace("@", "").replace("+", "-").replace("%", "pct")

    @property
    def after_original(self) -> bool:
        return self.extra_epochs > 0

    def config(self, base: TrainConfig) -> TrainConfig:
        if self.after_original:
            return dataclasses.replace(base, epochs=base.epochs + self.extra_epochs, schedule_epochs=base.epochs,
                                       events=self.events)
        return dataclasses.replace(base, events=self.events)


def parse_scenario(text: str, epochs: int, settings: Settings = None) -> Scenario:
    """``Scenario`` for ``text`` in a run of ``epochs`` epochs; ``ValueError`` naming the scenario
    and the accepted forms, or what is wrong with one of its events."""
    t = text.strip().lower()
    given = settings if callable(settings) else (lambda cls: dict(settings or {}))
    if t == "original":
        return Scenario(t)
    after = AFTER_ORIGINAL.fullmatch(t)
    if after:
        extra = int(after[1])
        if extra < 1:
            raise ValueError(f"scenario {text!r}: E must be at least 1 epoch")
        return Scenario(t, (Decompose.spelled(epochs, given(Decompose)),), extra)
    events = []
    for token in t.split("+"):
        m = TOKEN.fullmatch(token)
        cls = EVENTS.get(m[1]) if m else None
        if cls is None or (m[2] is None) == cls.takes_epoch:
            raise ValueError(f"scenario {text!r} not understood; use {forms()}")
        epoch = None if m[2] is None else (round(int(m[2]) / 100 * epochs) if m[3] else int(m[2]))
        events.append(cls.spelled(epoch, given(cls)))
    events = tuple(events)
    try:
        TrainConfig(epochs=epochs, events=events)  # every event validated against the run
    except ValueError as e:
        raise ValueError(f"scenario {text!r}: {e}") from None
    return Scenario(t, events)


def parse_scenarios(text: str, epochs: int, settings: Settings = None) -> list[Scenario]:
    """Comma list of scenarios, validated, duplicates refused."""
    items = [s for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"no scenario given; use a comma list of {forms()}")
    scenarios = [parse_scenario(s, epochs, settings) for s in items]
    names = [s.name for s in scenarios]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"scenario(s) given twice: {', '.join(dupes)}")
    return scenarios
