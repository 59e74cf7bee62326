"""Rank specs and rank rules: what a user may ask for, validated on construction.

A rule reads one spectrum (the singular values of one unfolding, ``Spectrum``) and gives a rank;
``factorch.rank.resolve`` decides which spectra a layer's modes have. ``Budget`` is the one
whole-model rule: ``factorch.rank.budget`` allocates it across layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

from torch import Tensor

from factorch.decompositions.evbmf import evbmf, evbmf_rank
from factorch.decompositions.svd import energy_rank, tolerance_rank

if TYPE_CHECKING:
    from factorch.measure.latency import Profiler

__all__ = ["Budget", "EVBMF", "Energy", "RankRule", "RankSpec", "Spectrum", "Tolerance", "evbmf", "validate_rank"]


@dataclass(frozen=True)
class Spectrum:
    """The singular values of one unfolding (float64, descending), its shape (rows, cols) and, where
    it is not the whole tensor's unfolding (a TT-SVD step), the whole tensor's energy ``total``."""

    values: Tensor
    shape: tuple[int, int]
    total: Optional[float] = None

    @property
    def energy(self) -> float:
        """``sum_i sigma_i^2``: the squared Frobenius norm of the unfolded matrix."""
        return float((self.values ** 2).sum())


class RankRule:
    """A data-driven rank: ``rank_of(spectrum, full, modes)`` gives the rank of one unfolding.

    ``modes`` is the number of modes whose discarded energies add up to the layer's squared error
    (Tucker: HOSVD bound; tensor train: Oseledets 2011 Thm 2.2; 1 for a matrix): ``Tolerance``
    gives each mode ``1/modes`` of the squared error budget."""

    def rank_of(self, spectrum: Spectrum, full: int, modes: int = 1) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class EVBMF(RankRule):
    """EVBMF rank (Nakajima et al. 2013), weakened as in MUSCO: ``R_evbmf + weaken * (R_full - R_evbmf)``.

    ``weaken=0`` is pure EVBMF, ``weaken=1`` full rank; the result is rounded to the nearest int.
    Random-init weights give 0 (they look like noise).
    """

    weaken: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.weaken, bool) or not isinstance(self.weaken, (int, float)) \
                or not 0.0 <= self.weaken <= 1.0:
            raise ValueError(f"EVBMF weaken must be a number in [0, 1], got {self.weaken!r}")

    def rank_of(self, spectrum: Spectrum, full: int, modes: int = 1) -> int:
        r = min(evbmf_rank(spectrum.values, spectrum.shape), full)
        return int(round(r + self.weaken * (full - r)))


@dataclass(frozen=True)
class Energy(RankRule):
    """Smallest rank keeping ``threshold`` of the unfolding's energy, measured on sigma^2:
    ``sum_{i<=R} sigma_i^2 >= threshold * sum_i sigma_i^2``."""

    threshold: float

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"Energy threshold must be a number in (0, 1], got {self.threshold!r}")

    def rank_of(self, spectrum: Spectrum, full: int, modes: int = 1) -> int:
        return min(energy_rank(spectrum.values, self.threshold), full)


@dataclass(frozen=True)
class Tolerance(RankRule):
    """Smallest ranks with relative error ``||W - W_hat||_F <= eps ||W||_F``.

    Each of the layer's ``m`` modes keeps the smallest rank whose discarded tail is at most
    ``eps ||W|| / sqrt(m)``. The bound then holds for the whole layer where the discarded
    energies add up: a matrix (SVD layers, Eckart-Young, m = 1: the exact smallest rank),
    Tucker-2/3 (HOSVD bound, ``||W - W_hat||^2 <= sum_k tail_k^2``; HOOI only lowers the error) and
    tensor trains (Oseledets 2011, Thm 2.2, on the bond unfoldings). CP has no such bound: there
    it applies to each unfolding on its own.
    """

    eps: float

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0.0 <= self.eps < 1.0:
            raise ValueError(f"Tolerance eps must be a number in [0, 1), got {self.eps!r}")

    def rank_of(self, spectrum: Spectrum, full: int, modes: int = 1) -> int:
        total = spectrum.total if spectrum.total is not None else spectrum.energy
        delta = self.eps * math.sqrt(total / max(modes, 1))
        return min(tolerance_rank(spectrum.values, delta), full)


@dataclass(frozen=True)
class Budget(RankRule):
    """A whole-model target: ``Budget(macs=0.4)``, ``Budget(params=0.1)`` or
    ``Budget(latency=0.5, profiler=fc.Profiler(batch=1, threads=1))`` (exactly one fraction).

    MACs and parameters: over the layers it governs (every layer whose chosen method has this
    budget as its rank, after ``filter_fn`` and the config), the decomposed layers keep at most that
    fraction of those layers' dense MACs (per example, at the ``example_input`` size) or parameters
    (weights and biases); all other layers are not counted. Latency: the *whole model's* measured
    latency (``profiler``: batch size, threads, device; default ``fc.Profiler()`` at the example's
    batch) is that fraction of the dense model's as closely as the timing noise allows (a fraction
    over it counts double), from per-layer latency tables measured on this machine and whole-model
    correction rounds (``factorch.latency_budget``). The ranks are
    chosen per layer to keep the most spectral energy of the unfoldings (``factorch.rank.budget``),
    for every method; the report gives the achieved fraction. Only ``decompose_``/``plan`` can resolve it.
    """

    macs: Optional[float] = None
    params: Optional[float] = None
    latency: Optional[float] = None
    profiler: Optional["Profiler"] = None

    def __post_init__(self) -> None:
        given = [(k, v) for k, v in (("macs", self.macs), ("params", self.params), ("latency", self.latency))
                 if v is not None]
        if len(given) != 1:
            raise ValueError(f"Budget takes exactly one of latency=F, macs=F or params=F (F a fraction in (0, 1]), "
                             f"got macs={self.macs!r}, params={self.params!r}, latency={self.latency!r}")
        kind, value = given[0]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0 \
                or math.isnan(value):
            raise ValueError(f"Budget {kind} must be a fraction in (0, 1] of the dense {kind} kept, got {value!r}")
        if self.profiler is not None:
            from factorch.measure.latency import Profiler

            if kind != "latency":
                raise ValueError(f"Budget profiler= times a latency budget; a {kind} budget is counted, not timed")
            if not isinstance(self.profiler, Profiler):
                raise ValueError(f"Budget profiler must be a fc.Profiler(...), got {self.profiler!r}")

    @property
    def kind(self) -> str:
        """``"macs"``, ``"params"`` or ``"latency"``."""
        return "macs" if self.macs is not None else "params" if self.params is not None else "latency"

    @property
    def fraction(self) -> float:
        return float(getattr(self, self.kind))

    def rank_of(self, spectrum: Spectrum, full: int, modes: int = 1) -> int:
        raise ValueError(f"{self!r} is a whole-model rule: pass it to fc.decompose_ or fc.plan, which "
                         "share the budget across layers; for one layer use an int, a fraction or a rule")

    def __str__(self) -> str:
        return f"budget:{self.kind}={self.fraction:g}"

    def __repr__(self) -> str:
        timed = f", profiler={self.profiler!r}" if self.profiler is not None else ""
        return f"Budget({self.kind}={self.fraction:g}{timed})"


RankSpec = Union[int, float, tuple, RankRule]


def validate_rank(spec: object, n_modes: Optional[int]) -> None:
    """Raise ``ValueError`` naming ``spec`` unless it is a valid rank spec for ``n_modes`` ranks
    (``None``: any number, e.g. one per tensor-train bond; the layer checks the count)."""
    if isinstance(spec, RankRule):
        return
    if isinstance(spec, bool):
        raise ValueError(f"rank must be an int, a tuple, a float in (0, 1] or a rule, got {spec!r}")
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"rank must be >= 1, got {spec}")
        return
    if isinstance(spec, float):
        if not (0.0 < spec <= 1.0) or math.isnan(spec):
            raise ValueError(f"a float rank is the fraction of parameters kept and must be in (0, 1], got {spec}")
        return
    if isinstance(spec, tuple):
        if n_modes == 1:
            raise ValueError(f"this method takes a single rank, got the tuple {spec!r}")
        ints = all(isinstance(r, int) and not isinstance(r, bool) for r in spec)
        if n_modes is None and (not spec or not ints):
            raise ValueError(f"a rank tuple must hold ints, one per bond, got {spec!r}")
        if n_modes is not None and (len(spec) != n_modes or not ints):
            raise ValueError(f"a rank tuple must hold {n_modes} ints (one per mode), got {spec!r}")
        if min(spec) < 1:
            raise ValueError(f"ranks must be >= 1, got {spec!r}")
        return
    raise ValueError(
        f"rank must be an int, a tuple (one int per mode), a float in (0, 1] or a rule "
        f"(EVBMF(), Energy(t), Tolerance(eps), Budget(...)), got {spec!r}"
    )
