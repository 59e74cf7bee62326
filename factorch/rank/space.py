"""A factorized layer's rank space: what its ranks are, what they cost and which spectra rate them.

Every factorized layer class describes itself once, in a classmethod ``rank_space(dense,
**options)`` returning a ``RankSpace``; the resolver (``factorch.rank.resolve``), the budget
allocator (``factorch.rank.budget``), the handlers and the sweep all read it, and nothing else
knows a layer's rank structure.

* ``modes``: one ``Mode`` per rank the layer takes (Tucker-2: out, in; Tucker-3: out, in,
  spatial; CP and SVD: one; tensor train: one per bond), each with its full rank (per group).
* ``params(ranks)``: the factorized layer's weight parameters (bias excluded; ``bias`` holds it);
  ``macs(ranks, input_shape)``: its MACs for one example of ``input_shape`` (no batch dim), equal
  to what ``factorch.measure.count`` counts on the real module (tested).
* ``unfoldings``: per group of the dense layer, per mode, the matrices whose singular values rate
  that mode. A mode with several matrices is tied (CP: one rank R over every unfolding, since a
  rank-R CP tensor has rank <= R in each of them): a rule takes the largest rank they give, the
  budget the least energy they keep.
* ``rule_ranks``: where rules do not read independent unfoldings, how they choose the ranks
  (tensor trains: TT-SVD picks bond k from the unfolding left after bonds 1..k-1 were truncated,
  Oseledets 2011 Alg. 1, which needs smaller ranks for the same ``Tolerance`` bound); the budget
  still scores bonds by ``unfoldings``.
* ``error_modes``: how many modes' discarded energies add up to the layer's squared error (the
  HOSVD bound for Tucker, Oseledets 2011 Thm 2.2 for tensor trains, Eckart-Young for a matrix);
  0 where no such bound holds (CP). ``Tolerance`` splits its error budget over them.
* ``fraction``: how a fraction of the parameters maps to ranks: ``"proportional"`` (every mode
  at the same fraction of its full rank, e.g. Tucker-2 keeps ``R_out/R_in = N/C``) or
  ``"uniform"`` (one rank for every mode, capped at each mode's full rank: tensor-train bonds,
  whose full ranks differ by orders of magnitude).
* ``limit``: the largest ranks worth computing, below the full ones, and why (``Limit``; CP:
  ``cp_limit``). The decision path passes a method over at ranks beyond it, with the reason
  (``refusal``); the budget allocator never raises a rank past it.
* ``step``: the rank granularity (the method's ``multiple``): rules, fractions and budgets
  choose each rank as a multiple of it or the mode's full rank (``aligned``, ``smallest``).
* ``work(ranks)``: the seconds computing the decomposition at these ranks is expected to take on
  one thread (the cost model of its route, ``docs/math.md``, "Cost of computing a decomposition")
  and the route; ``cost_to_compute`` falls back to a generic estimate. Progress lines read it.

Spectra are computed once per space, on first use, by ``factorch.decompositions.svd.singular_values``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from factorch.decompositions.cp import cp_als_seconds
from factorch.decompositions.svd import singular_values
from factorch.decompositions.svd_cost import GEMM_SECONDS
from factorch.rank.rules import RankRule, Spectrum

Ranks = tuple[int, ...]


@dataclass(frozen=True)
class Mode:
    """One rank of a layer: its name (for messages) and its largest value (per group)."""

    name: str
    full: int


@dataclass
class RankSpace:
    """See the module docstring. ``layer`` names the factorized class in messages."""

    layer: str
    modes: tuple[Mode, ...]
    params: Callable[[Ranks], int]
    macs: Callable[[Ranks, tuple[int, ...]], int]
    dense_params: int                      # the dense layer's weight parameters (bias excluded)
    dense_macs: Callable[[tuple[int, ...]], int]
    bias: int = 0                          # bias parameters, the same dense and factorized
    unfoldings: Optional[Callable[[], Sequence[Sequence[Sequence[Tensor]]]]] = None  # [group][mode][tied]
    error_modes: int = 1
    fraction: str = "proportional"
    rule_ranks: Optional[Callable[[RankRule], Ranks]] = None  # rules choose the ranks in sequence (TT-SVD)
    unit: str = "mode"
    per_group: bool = False                # a grouped conv: ranks are per group
    limit: Optional["Limit"] = None        # the largest ranks worth computing, and why
    work: Optional[Callable[[Ranks], tuple[float, str]]] = None  # (one-thread seconds, route) to compute
    step: int = 1                          # ranks in multiples of this (or full): the method's ``multiple``
    _spectra: Optional[list[list[list[Spectrum]]]] = field(default=None, repr=False)

    @property
    def full(self) -> Ranks:
        return tuple(m.full for m in self.modes)

    def describe(self) -> str:
        """``(out 16, in 3)``: the modes and their full ranks, for messages."""
        return "(" + ", ".join(f"{m.name} {m.full}" for m in self.modes) + ")" + \
            (" per group" if self.per_group else "")

    def check(self, rank: object) -> Ranks:
        """A constructor's ranks: an int (every mode) or one int per mode, each in ``[1, full]``;
        anything else is one ``ValueError`` naming the value and the modes."""
        ints = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        if ints(rank):
            ranks = (rank,) * len(self.modes)
        elif isinstance(rank, (tuple, list)) and rank and all(ints(r) for r in rank):
            ranks = tuple(rank)
        else:
            raise ValueError(f"{self.layer} takes int ranks (an int, or one per {self.unit} {self.describe()}), "
                             f"got {rank!r}; a fraction or a rule needs the layer's weights: use from_dense, "
                             "empty_like or fc.decompose_")
        if len(ranks) != len(self.modes):
            raise ValueError(f"{self.layer} has {len(self.modes)} {self.unit}s {self.describe()}: give "
                             f"{len(self.modes)} ranks, got {rank!r}")
        for r, mode in zip(ranks, self.modes):
            if not 1 <= r <= mode.full:
                why = f"it exceeds the full rank {mode.full}" if r > mode.full else "ranks must be >= 1"
                raise ValueError(f"{self.layer} rank {r} of {self.unit} {mode.name!r} must be in [1, {mode.full}] "
                                 f"({why}); full ranks {self.describe()}")
        return ranks

    def ceiling(self) -> Ranks:
        """Per mode, the largest rank a rule or budget may choose: full, or ``limit``'s where lower."""
        top = self.limit.ranks if self.limit is not None else self.full
        return tuple(min(f, t) for f, t in zip(self.full, top))

    def aligned(self, ranks: Ranks, up: bool) -> Ranks:
        """``ranks`` on the ``step`` grid: each a multiple of ``step`` or its mode's full rank,
        rounded ``up`` (a rule: at least the energy it asked for) or down (a fraction: at most its
        parameters), never below ``step`` (nor 0: a rank-0 rule result stays 0, the layer is skipped)."""
        if self.step == 1:
            return tuple(ranks)
        out = []
        for r, f in zip(ranks, self.full):
            if r <= 0 or r >= f:
                out.append(r)
                continue
            q = -(-r // self.step) if up else r // self.step
            out.append(min(f, max(q, 1) * self.step))
        return tuple(out)

    def smallest(self) -> Ranks:
        """The smallest ranks on the ``step`` grid: ``step`` per mode (its full rank where smaller)."""
        return tuple(min(self.step, f) for f in self.full)

    def refusal(self, ranks: Ranks) -> Optional[str]:
        """Why ``ranks`` are not worth computing (above ``limit``), or None."""
        if self.limit is None or all(r <= m for r, m in zip(ranks, self.limit.ranks)):
            return None
        most = self.params(self.limit.ranks) / max(self.dense_params, 1)
        return (f"rank {shown(ranks)} is above {shown(self.limit.ranks)}, the largest worth computing here: "
                f"{self.limit.why(ranks)}; a fraction up to {most:.3g} of the weights stays within it")

    def cost_to_compute(self, ranks: Ranks) -> tuple[float, str]:
        """``work(ranks)``, or where the layer gives no cost model a generic one: 20 passes of a
        rank-wide product over the weight (HOOI-like sweeps), and no route."""
        if self.work is not None:
            return self.work(ranks)
        return GEMM_SECONDS * 20 * self.dense_params * sum(ranks), ""

    def spectra(self) -> list[list[list[Spectrum]]]:
        """``[mode][tied unfolding][group]``: the singular values the rules and the budget read.

        Computed once. Non-finite weights are refused here, before any SVD, with a ``ValueError``
        (the decision path adds the layer's name)."""
        if self._spectra is None:
            if self.unfoldings is None:
                raise ValueError(f"{self.layer} has no spectra to read here (no weights)")
            per_group = self.unfoldings()
            for block in per_group:
                for tied in block:
                    for m in tied:
                        if not bool(torch.isfinite(m).all()):
                            raise ValueError("its weights have NaN or Inf values; refusing to read their spectra")
            self._spectra = [[[Spectrum(singular_values(group[k][t]), tuple(group[k][t].shape))
                               for group in per_group]
                              for t in range(len(per_group[0][k]))]
                             for k in range(len(self.modes))]
        return self._spectra

    def kept_energy(self, flat: bool = False) -> list[Tensor]:
        """Per mode: ``kept[r]`` = the fraction of ``||W||^2`` that rank ``r`` keeps (``kept[0] = 0``),
        length ``full + 1``. Groups share one rank, so their energies add; a tied mode keeps the
        least of its unfoldings. ``flat=True`` rates every rank unit alike (no weights to read:
        a from-scratch layer), so only the cost steers a budget."""
        out = []
        for k, mode in enumerate(self.modes):
            if flat:
                out.append(torch.linspace(0.0, 1.0, mode.full + 1, dtype=torch.float64))
                continue
            curves = []
            for tied in self.spectra()[k]:
                e = sum(torch.nn.functional.pad(s.values.cpu() ** 2, (0, max(mode.full - len(s.values), 0)))[:mode.full]
                        for s in tied)
                total = sum(s.energy for s in tied) or 1.0
                curves.append(torch.cat([e.new_zeros(1), e.cumsum(0) / total]))
            out.append(torch.stack(curves).min(0).values)
        return out


def shown(ranks: Ranks) -> str:
    """``16`` for one rank, ``(16, 32)`` for several: ranks in messages."""
    return str(ranks[0]) if len(ranks) == 1 else str(ranks)


@dataclass(frozen=True)
class Limit:
    """The largest ranks worth computing (one per mode) and ``why(ranks)`` larger ones are not."""

    ranks: Ranks
    why: Callable[[Ranks], str]


def cp_limit(out_channels: int, in_channels: int, kernel: Sequence[int], groups: int = 1) -> Limit:
    """CP's limit: rank at most ``max(N, C)`` per group (``docs/math.md``, "CP convolution").

    Beyond it the layer's first 1x1 conv widens the channels (its depthwise convs run on more
    channels than the dense layer has), while CP-ALS costs ``~N C k R + R^3`` per sweep over
    hundreds of sweeps: at ``fc.CP(0.5)`` a 512-channel 3x3 conv gets R = 1145, minutes of ALS
    per layer, for the parameters and MACs Tucker-2 reaches at the same fraction with ranks below
    the channels (computed by HOOI in seconds)."""
    n, c, k = out_channels // groups, in_channels // groups, tuple(kernel)
    top = max(n, c)

    def why(ranks: Ranks) -> str:
        r = ranks[0]
        est = groups * cp_als_seconds((n, c, *k), r)
        at_top = groups * cp_als_seconds((n, c, *k), top)
        return (f"more CP components than the layer has channels (max(N, C) = {top}"
                f"{' per group' if groups > 1 else ''}) widen it, and CP-ALS would take about {_clock(est)} on one "
                f"thread (about {_clock(at_top)} at rank {top}); Tucker-2 reaches the same size with ranks below the "
                "channels")

    return Limit((top,), why)


def _clock(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def largest_fitting(values: Sequence[float], fits: Callable[[float], bool]) -> Optional[float]:
    """The largest of the sorted ``values`` for which the monotone ``fits`` holds (None if none)."""
    lo, hi, best = 0, len(values) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(values[mid]):
            best, lo = values[mid], mid + 1
        else:
            hi = mid - 1
    return best

