"""The one resolver: any rank spec against a layer's ``RankSpace`` -> one int per mode.

One convention for every method (Tucker-2, Tucker-3, CP, SVD, tensor train):

* ``int r``: a ceiling for every mode, ``R_k = min(r, full_k)``. A mode capped at its full rank
  is noted (the report row says so), never an error: ``fc.Tucker2(rank=64)`` is usable on a model
  whose first layers have 16 channels.
* ``tuple``: exactly these ranks, one per mode; a rank above its mode's full rank, or the wrong
  number of ranks, is a ``ValueError`` naming the mode (a tuple names one layer's ranks: a rank it
  cannot have is a mistake, not a ceiling).
* ``float f`` in (0, 1]: the largest ranks whose weight parameters (bias excluded) are at most
  ``f * dense weights``, along the space's ray (``RankSpace.fraction``). Where even rank 1
  everywhere keeps more than ``f``, the ranks are 1 and a note says how much they keep.
* a rule (``EVBMF``, ``Energy``, ``Tolerance``): for mode k,
  ``R_k = min(full_k, max over groups and tied unfoldings of rule.rank_of(spectrum))``, or the
  space's own ``rule_ranks`` (tensor trains: TT-SVD picks each bond in turn); may be 0 (the
  unfolding looks like noise): callers skip the layer and say why, never build rank 0.
* ``Budget``: a whole-model rule, resolved by ``factorch.rank.budget`` into ints first.

With a rank granularity (``RankSpace.step``, the method's ``multiple``), a rule's ranks are rounded
up to the grid (at least the energy or error bound it asked for) and a fraction's down (at most its
parameters); ints and tuples are the user's exact ranks and stay as given.

Layer constructors take resolved ints only and refuse ranks outside ``[1, full]``.
"""
from __future__ import annotations

from dataclasses import dataclass

from factorch.rank.rules import Budget, RankRule, RankSpec, validate_rank
from factorch.rank.space import RankSpace, Ranks, largest_fitting, shown


@dataclass(frozen=True)
class Resolution:
    """Resolved ranks and, if they differ from what was asked, why (``note``); ``capped``: an int
    rank was lowered to a mode's full rank."""

    ranks: Ranks
    note: str = ""
    capped: bool = False


def resolve(spec: RankSpec, space: RankSpace) -> Resolution:
    """Turn ``spec`` into one int per mode of ``space`` (see the module docstring)."""
    validate_rank(spec, None if isinstance(spec, tuple) else len(space.modes))
    full = space.full
    if isinstance(spec, Budget):
        spec.rank_of(None, 0)  # raises: a whole-model rule needs decompose_/plan
    if isinstance(spec, RankRule):
        return _on_grid(_rule(spec, space), space, up=True)
    if isinstance(spec, float):
        return _on_grid(_fraction(spec, space), space, up=False)
    if isinstance(spec, int):
        ranks = tuple(min(spec, f) for f in full)
        if ranks == (spec,) * len(full):
            return Resolution(ranks)
        return Resolution(ranks, f"rank {spec} capped at the full ranks {space.describe()}", capped=True)
    if len(spec) != len(full):
        raise ValueError(f"rank {spec!r} has {len(spec)} ranks; {space.layer} here has {len(full)} {space.unit}s "
                         f"{space.describe()}, one rank each")
    for r, mode in zip(spec, space.modes):
        if r > mode.full:
            raise ValueError(f"rank {spec!r} exceeds the full rank of mode {mode.name!r} ({mode.full}) of this "
                             f"layer; full ranks {space.describe()}")
    return Resolution(tuple(spec))


def _rule(rule: RankRule, space: RankSpace) -> Resolution:
    full = space.full
    if space.rule_ranks is not None:
        return Resolution(tuple(min(f, r) for f, r in zip(full, space.rule_ranks(rule))))
    spectra = space.spectra()
    split = max(space.error_modes, 1)
    return Resolution(tuple(min(f, max(rule.rank_of(s, f, split) for tied in spectra[k] for s in tied))
                            for k, f in enumerate(full)))


def _on_grid(resolution: Resolution, space: RankSpace, up: bool) -> Resolution:
    """``resolution`` with its ranks on the space's ``step`` grid, noted where they moved."""
    ranks = space.aligned(resolution.ranks, up)
    if ranks == resolution.ranks:
        return resolution
    moved = (f"ranks {shown(resolution.ranks)} {'rounded up' if up else 'rounded down'} to the rank grid: "
             f"multiples of {space.step} or the full rank")
    return Resolution(ranks, "; ".join(n for n in (resolution.note, moved) if n), resolution.capped)


def _fraction(f: float, space: RankSpace) -> Resolution:
    """The largest ranks along the space's ray with ``params(ranks) <= f * dense_params``."""
    full, target = space.full, f * space.dense_params
    fits = lambda ranks: space.params(ranks) <= target  # noqa: E731
    if space.fraction == "uniform":
        ray = lambda r: tuple(min(int(r), m) for m in full)  # noqa: E731
        best = largest_fitting(range(1, max(full) + 1), lambda r: fits(ray(r)))
    else:  # proportional: R_k = max(1, floor(t full_k)); bisection over t, ray(lo) always fits
        ray = lambda t: tuple(max(1, int(t * m)) for m in full)  # noqa: E731
        lo, hi = 0.0, 1.0
        if fits(ray(hi)):
            lo = hi
        for _ in range(60 if lo < hi else 0):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if fits(ray(mid)) else (lo, mid)
        best = lo if fits(ray(lo)) else None
    if best is not None:
        return Resolution(ray(best))
    ones = (1,) * len(full)
    kept = space.params(ones) / max(space.dense_params, 1)
    return Resolution(ones, f"fraction {f:g} is below rank 1: ranks {ones} keep {kept:.3g} of the weights")
