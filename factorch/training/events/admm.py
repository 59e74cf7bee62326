"""Low-rank training by ADMM for the first ``until`` epochs, then decomposed (Yin et al., CVPR 2021,
section 3): ``--admm-until K``, scenario ``admm@K``.

The dense model trains with ``fc.ADMM``'s penalty added to every batch's loss, towards the ranks
that the event's methods (and ``first_conv``/``exclude``) give at the start (resolved once, on
the initial weights). As the official code does: ``Z = P(W)``, ``U = 0`` at
the start, ``Z``/``U`` updated at the start of every later epoch (or every ``update_every``
optimizer steps), and before epoch ``until`` the trained ``W`` is decomposed at exactly ``Z``'s
ranks; training goes on with the decomposed model. Its checkpoint state is ``fc.ADMM``'s
(``Z``, ``U``, rho, ranks) and the step count, so a killed run resumes bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

import torch

from factorch.admm import ADMM, check_growth, check_rho
from factorch.training.events.base import Change, Event, Option, RunContext, register
from factorch.training.loop import Batch
from factorch.training.events.decomposing import CALIBRATION_BATCHES, Decomposing, check_batches


@register
@dataclass
class ADMMPhase(Decomposing):
    """ADMM with its methods for epochs ``[0, until)``, decomposition before epoch ``until``.

    ``rho``: the penalty weight (official default 1e-3); ``update_every``: optimizer steps between
    Z/U updates (None: once per epoch, at its start); ``rho_growth``: rho's factor at each update;
    ``calibration_batches``: training batches for data-aware factors in the final decomposition."""

    until: int
    rho: float = 1e-3
    update_every: Optional[int] = None
    rho_growth: float = 1.0
    calibration_batches: int = field(default=0, kw_only=True)

    kind: ClassVar[str] = "admm"
    token: ClassVar[str] = "admm"
    flag: ClassVar[str] = "--admm-until"
    flag_help: ClassVar[str] = ("ADMM towards the --method/--rank ranks for the first K epochs, then decompose at "
                                "exactly those ranks and train on")
    options = (
        Option("rho", "--admm-rho", "penalty weight rho (default 1e-3, the official code's)", type=float,
               metavar="RHO"),
        Option("update_every", "--admm-update-every",
               "update Z and U every N optimizer steps (default: once per epoch, at its start)", type=int, metavar="N"),
        Option("rho_growth", "--admm-rho-growth", "multiply rho by F at every update (default 1)", type=float,
               metavar="F"),
        CALIBRATION_BATCHES,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_batches(self.calibration_batches)
        check_rho(self.rho)
        check_growth(self.rho_growth)
        if self.update_every is not None and (isinstance(self.update_every, bool) or
                                              not isinstance(self.update_every, int) or self.update_every < 1):
            raise ValueError(f"ADMM update_every must be a number of steps >= 1 (or None: once per epoch), "
                             f"got {self.update_every!r}")
        self._admm: Optional[ADMM] = None
        self._steps = 0
        self._epoch = -1

    def changes(self) -> tuple[tuple[int, str], ...]:
        return ((self.until, "decompose"),)

    @property
    def first_epoch(self) -> int:
        return 0

    @property
    def label(self) -> str:
        return f"admm_until={self.until}"

    def validate(self, epochs: int, events: Sequence[Event]) -> None:
        k = self.until
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= epochs - 1:
            raise ValueError(f"ADMM until epoch {k!r} is outside the run: it must be in [1, {epochs - 1}] "
                             f"for {epochs} epochs (ADMM for K epochs, then decomposed and fine-tuned)")
        for other in events:
            early = [epoch for epoch, _ in other.changes() if epoch <= k]
            if other is not self and early:
                raise ValueError(f"{other.label} comes before the ADMM end (admm_until={k}): ADMM trains the "
                                 f"dense model until epoch {k} and decomposes it there itself")

    def _active(self, epoch: int) -> bool:
        return 0 <= epoch < self.until

    # ---- hooks --------------------------------------------------------------------------------
    def begin(self, run: RunContext, first_epoch: int) -> None:
        """Set the target ranks (on the weights now) and ``Z = P(W)``, unless past the ADMM phase
        (a resumed run then loads its state: Z, U, rho and the ranks fixed at the start)."""
        if 0 <= first_epoch <= self.until:
            self._admm = ADMM(run.model, list(self.methods), self.rho, self.filter_fn(run.model),
                              example_input=run.example, rho_growth=self.rho_growth)
            if first_epoch == 0:
                ranks = ", ".join(f"{n} {'x'.join(map(str, r))}" for n, r in self._admm.ranks.items())
                run.log(f"ADMM until epoch {self.until} on {len(self._admm.ranks)} layer(s), "
                        f"rho {self.rho:g}: {ranks}")

    def before_epoch(self, epoch: int, run: RunContext) -> Optional[Change]:
        self._epoch = epoch
        if self._admm is None:
            return None
        if epoch == self.until:  # decompose the trained W at Z's ranks (every rank gets rank 0's factors)
            admm, self._admm = self._admm, None
            report = admm.decompose_(run.calibration(self.calibration_batches))
            return Change("decompose", [r.name for r in report.decomposed],
                          {r.name: r.skipped for r in report.skipped}, report if run.dist.is_main else None)
        if 0 < epoch and self.update_every is None:  # the official code: not before the first epoch
            self._admm.update()
        return None

    def loss(self, batch: Batch) -> Optional[torch.Tensor]:
        return self._admm.penalty() if self._admm is not None else None

    def after_step(self) -> None:
        if self._admm is not None and self.update_every is not None:
            self._steps += 1
            if self._steps % self.update_every == 0:
                self._admm.update()

    def metrics(self) -> dict[str, Any]:
        """``admm_distance``: ``||W - Z|| / ||W||`` per layer and their mean after the epoch."""
        if self._admm is None or not self._active(self._epoch):
            return {}
        return {"admm_distance": self._admm.distance(), "admm_rho": self._admm.rho}

    def summary(self, metrics: dict[str, Any]) -> str:
        return f"  ||W-Z||/||W|| {metrics['admm_distance']['mean']:.4f}" if metrics else ""

    def state_dict(self) -> dict[str, Any]:
        return {"admm": self._admm.state_dict() if self._admm is not None else None, "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._admm is not None and state.get("admm") is not None:
            self._admm.load_state_dict(state["admm"], keep_saved_ranks=True)  # fixed at the run's start
        self._steps = int(state.get("steps", 0))
