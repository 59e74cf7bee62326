"""Rank rules and the one function that resolves any rank spec to integers.

A rank spec is one of

* ``int``: that rank for every truncated mode;
* ``(out_rank, in_rank)``: one rank per mode (Tucker-2); for tensor-train, one rank per bond;
* ``float`` in (0, 1]: the fraction of the layer's weight parameters to keep (bias excluded); the
  layer turns it into ranks with its own parameter formula;
* a rule: ``EVBMF(weaken)``, ``Energy(threshold)`` or ``Tolerance(eps)``, applied to each mode's
  unfolding (tensor-train: to each unfolding TT-SVD meets, see ``resolve_tt_ranks``);
* ``Budget(macs=f)`` / ``Budget(params=f)``: a whole-model rule; ``decompose_``/``plan`` allocate
  its ranks across layers (``factorch.budget``) before any per-layer decision.

For a grouped conv, ranks are per group (every group gets the same ranks) and a rule takes the
largest rank over the groups. A rule may give 0 (the unfolding looks like noise): callers skip
the layer and say why, never build a rank-0 layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from factorch.decompositions.evbmf import evbmf
from factorch.decompositions.svd import energy_rank, tolerance_rank
from factorch.decompositions.tt import tt_svd

__all__ = ["Budget", "EVBMF", "Energy", "RankRule", "RankSpec", "Tolerance", "evbmf", "resolve_rank",
           "resolve_tt_ranks", "tt_rule_ranks", "validate_rank"]


class RankRule:
    """A data-driven rank: ``rank_of(matrix, full)`` gives the rank of one unfolding."""

    def rank_of(self, matrix: Tensor, full: int) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class EVBMF(RankRule):
    """EVBMF rank (Nakajima et al. 2013), weakened as in MUSCO: ``R_evbmf + weaken * (R_full - R_evbmf)``.

    ``weaken=0`` is pure EVBMF, ``weaken=1`` full rank; the result is rounded to the nearest int.
    """

    weaken: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.weaken, bool) or not isinstance(self.weaken, (int, float)) \
                or not 0.0 <= self.weaken <= 1.0:
            raise ValueError(f"EVBMF weaken must be a number in [0, 1], got {self.weaken!r}")

    def rank_of(self, matrix: Tensor, full: int) -> int:
        r = min(evbmf(matrix), full)
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

    def rank_of(self, matrix: Tensor, full: int) -> int:
        s = torch.linalg.svdvals(matrix.detach().to(device="cpu", dtype=torch.float64))
        return min(energy_rank(s, self.threshold), full)


@dataclass(frozen=True)
class Tolerance(RankRule):
    """Smallest ranks with relative error ``||W - W_hat||_F <= eps ||W||_F``.

    Tensor-train layers: TT-SVD to ``eps`` (Oseledets 2011: every step discards at most
    ``eps ||W|| / sqrt(d - 1)``, so the bound holds for the whole layer). A matrix (SVD layers):
    the smallest R with ``(sum_{i > R} sigma_i^2)^(1/2) <= eps ||W||`` (Eckart-Young: exact bound).
    Tucker-2/CP apply it to each channel unfolding, which bounds each mode's error, not the total.
    """

    eps: float

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0.0 <= self.eps < 1.0:
            raise ValueError(f"Tolerance eps must be a number in [0, 1), got {self.eps!r}")

    def rank_of(self, matrix: Tensor, full: int) -> int:
        s = torch.linalg.svdvals(matrix.detach().to(device="cpu", dtype=torch.float64))
        return min(tolerance_rank(s, self.eps * float(s.norm())), full)


@dataclass(frozen=True)
class Budget(RankRule):
    """A whole-model target: ``Budget(macs=0.4)`` or ``Budget(params=0.1)`` (exactly one).

    Over the layers it governs (every layer whose method has this budget as its rank and which
    that method handles, after ``filter_fn`` and the config), the decomposed layers keep at most
    that fraction of those layers' dense MACs (per example, at the ``example_input`` size) or
    parameters (weights and biases); all other layers are not counted. The ranks are chosen per
    layer to keep the most spectral energy of the unfoldings (``factorch.budget``); the report
    gives the achieved fraction. Only ``decompose_``/``plan`` can resolve it.
    """

    macs: Optional[float] = None
    params: Optional[float] = None

    def __post_init__(self) -> None:
        given = [(k, v) for k, v in (("macs", self.macs), ("params", self.params)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"Budget takes exactly one of macs=F or params=F (F a fraction in (0, 1]), "
                             f"got macs={self.macs!r}, params={self.params!r}")
        kind, value = given[0]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0 \
                or math.isnan(value):
            raise ValueError(f"Budget {kind} must be a fraction in (0, 1] of the dense {kind} kept, got {value!r}")

    @property
    def kind(self) -> str:
        """``"macs"`` or ``"params"``."""
        return "macs" if self.macs is not None else "params"

    @property
    def fraction(self) -> float:
        return float(self.macs if self.macs is not None else self.params)

    def rank_of(self, matrix: Tensor, full: int) -> int:
        raise ValueError(f"{self!r} is a whole-model rule: pass it to fc.decompose_ or fc.plan, which "
                         "share the budget across layers; for one layer use an int, a fraction or a rule")

    def __str__(self) -> str:
        return f"budget:{self.kind}={self.fraction:g}"


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
            raise ValueError(f"a rank tuple must hold {n_modes} ints (out_rank, in_rank), got {spec!r}")
        if min(spec) < 1:
            raise ValueError(f"ranks must be >= 1, got {spec!r}")
        return
    raise ValueError(
        f"rank must be an int, an (out, in) tuple, a float in (0, 1] or a rule "
        f"(EVBMF(), Energy(t), Tolerance(eps)), got {spec!r}"
    )


def resolve_rank(
    spec: RankSpec,
    full: Sequence[int],
    unfoldings: Callable[[], Sequence[Sequence[Tensor]]],
    from_fraction: Callable[[float], Sequence[int]],
) -> tuple[int, ...]:
    """Turn ``spec`` into one int per mode.

    ``full[k]`` is mode k's largest rank; ``unfoldings()`` returns, per mode, one matrix per
    group (called only for rules); ``from_fraction(f)`` is the layer's parameter formula.
    An explicit rank above ``full`` is an error; a rule's result is clipped to ``[0, full]``;
    a fraction's to ``[1, full]``.
    """
    validate_rank(spec, len(full))
    if isinstance(spec, RankRule):
        per_mode = unfoldings()
        return tuple(max(spec.rank_of(m, f) for m in mats) for mats, f in zip(per_mode, full))
    if isinstance(spec, float):
        return tuple(min(max(int(r), 1), f) for r, f in zip(from_fraction(spec), full))
    ranks = spec if isinstance(spec, tuple) else (spec,) * len(full)
    for r, f in zip(ranks, full):
        if r > f:
            raise ValueError(f"rank {spec!r} exceeds the full rank {tuple(full)} of this layer")
    return tuple(ranks)


def resolve_tt_ranks(
    spec: RankSpec,
    full: Sequence[int],
    params_of: Callable[[tuple[int, ...]], int],
    dense_params: int,
    by_svd: Optional[Callable[[RankRule], tuple[int, ...]]] = None,
) -> tuple[int, ...]:
    """Tensor-train ranks, one per bond, for ``spec`` (``full[k]``: bond k's full rank).

    * int: every bond gets it, capped at the bond's full rank (a TT's end bonds are small: a cap
      keeps ``TT(rank=8)`` usable on every layer; uniform capped ranks are always consistent);
    * tuple: one int per bond, each in ``[1, full]``, else an error naming it;
    * float f: the largest uniform (capped) rank with ``params_of(ranks) <= f * dense_params``, at least 1;
    * a rule: ``by_svd(rule)``, the ranks TT-SVD picks (``tt_rule_ranks``); may hold 0 (callers skip).
    """
    validate_rank(spec, None)
    full = tuple(int(f) for f in full)
    cap = lambda r: tuple(min(r, f) for f in full)  # noqa: E731
    if isinstance(spec, RankRule):
        if by_svd is None:
            raise ValueError(f"rank rule {spec!r} needs the layer's weights: use from_dense")
        return tuple(by_svd(spec))
    if isinstance(spec, float):
        best = 1
        for r in range(2, max(full, default=1) + 1):
            if params_of(cap(r)) > spec * dense_params:
                break
            best = r
        return cap(best)
    if isinstance(spec, int):
        return cap(spec)
    if len(spec) != len(full):
        raise ValueError(f"rank tuple {spec!r} has {len(spec)} ranks; this layer's tensor train has "
                         f"{len(full)} bonds (full ranks {full})")
    if any(r > f for r, f in zip(spec, full)):
        raise ValueError(f"rank {spec!r} exceeds the full TT-ranks {full} of this layer")
    return tuple(spec)


def tt_rule_ranks(tensor: Tensor, rule: RankRule) -> tuple[int, ...]:
    """The TT-ranks TT-SVD of ``tensor`` picks under ``rule``: ``Tolerance(eps)`` by Oseledets'
    relative-error rule; any other rule by ``rule.rank_of`` on each sequential unfolding. A rule's
    0 is reported as 0 (the unfolding looks like noise), so callers can skip the layer."""
    if isinstance(rule, Tolerance):
        return tuple(c.shape[-1] for c in tt_svd(tensor, eps=rule.eps)[:-1])
    raw: list[int] = []

    def pick(z: Tensor) -> int:
        raw.append(int(rule.rank_of(z, min(z.shape))))
        return raw[-1]

    tt_svd(tensor, rule=pick)
    return tuple(raw)
