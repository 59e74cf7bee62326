"""Whole-model rank allocation for ``fc.Budget``: meet a MACs or parameter target, keep the most energy.

``docs/math.md``, "Budgets": greedy allocation maximising the retained spectral energy under a total-cost
constraint (the whole-model rank selection of Zhang et al., TPAMI 2016), for every method through
its ``RankSpace``:

* score: ``RankSpace.kept_energy`` -- per mode k, the fraction ``kept_k(r)`` of ``||W||^2`` that
  rank r keeps in that mode's unfolding(s) -- and the allocation maximises
  ``sum over layers and modes of log kept_k(r_k)``. Per layer, ``prod_k kept_k`` lies between
  the energy it surely keeps, ``1 - sum_k (1 - kept_k)`` (the discarded energies bound the squared
  error: Tucker-2/3 by the HOSVD bound, SVD with equality by Eckart-Young, a tensor train by
  Oseledets 2011 Thm 2.2 on the full tensor's bond unfoldings), and ``min_k kept_k`` (the
  approximation has rank r_k in every unfolding); across layers, the signal a chain of layers
  passes is about the product of what each keeps. The logarithm makes that a sum (so the greedy
  can work mode by mode) and never starves a layer: a mode keeping little has a large marginal
  gain. (Maximising the plain sum of kept energies did: it raised cheap modes while others stayed
  at rank 1, Tucker-2 ranks like (229, 1), and left whole 256-channel layers at rank (1, 1).)
  A CP rank R keeps at most the least rank-R energy of its unfoldings (one tied mode).
* cost: the space's exact ``params``/``macs`` functions of the ranks (the ones ``factorch.measure.count``
  agrees with), so the target holds for the real modules.

Greedy: start at rank 1 everywhere (with a rank granularity ``RankSpace.step``: at ``step``),
repeatedly raise the (layer, mode) rank by one (by ``step``, up to the mode's ceiling) with the most energy
per unit of added cost while the total stays within ``fraction * dense total`` and the layer stays
cheaper than its dense form in MACs (so ``decompose_`` never passes it over) and, under a
parameter budget, in parameters. A layer whose rank-1 form is not cheaper cannot be governed: it is
returned as unusable and the decision path passes over its method.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import Tensor

from factorch.rank.rules import Budget
from factorch.rank.space import RankSpace, Ranks


@dataclass
class Item:
    """One layer a budget governs: its rank space and its input shape (no batch dim); ``flat``:
    rate every rank unit alike (from scratch: no trained spectra to read)."""

    name: str
    space: RankSpace
    shape: tuple[int, ...]
    flat: bool = False
    label: str = ""  # what the layer is, for messages (``conv3x3 16->32``)
    latency: Optional[Callable[[Ranks], float]] = None  # seconds at these ranks (a latency budget's table)
    dense_latency: Optional[float] = None

    def cost(self, kind: str, ranks: Ranks) -> float:
        if kind == "macs":
            return self.space.macs(ranks, self.shape)
        if kind == "latency":
            return self.latency(ranks)
        return self.space.params(ranks) + self.space.bias

    def dense(self, kind: str) -> float:
        if kind == "macs":
            return self.space.dense_macs(self.shape)
        if kind == "latency":
            return self.dense_latency
        return self.space.dense_params + self.space.bias


@dataclass
class Pool:
    """The layers one budget governs, the ranks it gave them, their dense and planned cost."""

    budget: Budget
    names: list[str] = field(default_factory=list)
    dense: int = 0
    planned: int = 0


def allocate(budget: Budget, items: list[Item], target: Optional[float] = None) -> tuple[dict[str, Optional[Ranks]], Pool]:
    """Ranks per layer name (None: no rank makes the layer cheaper, the method cannot take it)
    and the pool's totals. ``target``: the total cost allowed (default ``budget.fraction`` of the
    usable layers' dense total; a latency budget computes its own from the whole model).
    ``ValueError`` when rank 1 everywhere already exceeds the target."""
    kind = budget.kind
    caps = ("macs", kind) if kind != "macs" else ("macs",)
    ones = {it.name: it.space.smallest() for it in items}  # rank 1 (``step`` on a grid) per mode
    usable = [it for it in items if all(it.cost(c, ones[it.name]) < it.dense(c) for c in caps)]
    result: dict[str, Optional[Ranks]] = {it.name: None for it in items}
    pool = Pool(budget, [it.name for it in usable], sum(it.dense(kind) for it in usable))
    if not usable:
        return result, pool
    ranks = [list(ones[it.name]) for it in usable]
    total = sum(it.cost(kind, tuple(r)) for it, r in zip(usable, ranks))
    target = budget.fraction * pool.dense if target is None else target
    if total > target:
        least = "rank 1" if all(it.space.step == 1 for it in usable) else "the smallest ranks on the rank grid"
        raise ValueError(f"{budget!r} cannot be met: {least} in each of the {len(usable)} layers it governs "
                         f"already keeps {total / pool.dense:.4f} of their {kind}; valid fractions here are "
                         f"in [{math.ceil(total / pool.dense * 1e4) / 1e4}, 1]")
    kept = [_kept_energy(it) for it in usable]
    heap: list[tuple[float, int, int, int]] = []
    version = [0] * len(usable)

    def push(i: int) -> None:
        it, r = usable[i], ranks[i]
        now = it.cost(kind, tuple(r))
        top = it.space.ceiling()  # full, or the largest rank worth computing
        for k, rk in enumerate(r):
            if rk >= top[k]:
                continue
            new = _bumped(r, k, it.space.step, top[k])
            gain = _log(kept[i][k][new[k]]) - _log(kept[i][k][rk])  # the rise of sum log kept
            if gain <= 0.0:
                continue
            delta = it.cost(kind, new) - now
            heapq.heappush(heap, (-gain / max(delta, 1e-12), i, k, version[i]))

    for i in range(len(usable)):
        push(i)
    while heap:
        _, i, k, v = heapq.heappop(heap)
        if v != version[i]:
            continue  # the layer changed since this entry was pushed
        it = usable[i]
        new = _bumped(ranks[i], k, it.space.step, it.space.ceiling()[k])
        delta = it.cost(kind, new) - it.cost(kind, tuple(ranks[i]))
        if total + delta > target or any(it.cost(c, new) >= it.dense(c) for c in caps):
            continue  # costs only grow with ranks: this increment never fits later
        ranks[i], total = list(new), total + delta
        version[i] += 1
        push(i)
    for it, r in zip(usable, ranks):
        result[it.name] = tuple(r)
    pool.planned = total if kind == "latency" else int(total)
    return result, pool


def _log(kept: Tensor) -> float:
    return math.log(max(float(kept), 1e-12))


def _kept_energy(item: Item) -> list:
    try:
        return item.space.kept_energy(flat=item.flat)
    except ValueError as e:  # e.g. NaN weights: one error naming the layer
        raise ValueError(f"layer {item.name!r}{f' ({item.label})' if item.label else ''}: {e}") from None


def _bumped(ranks: list[int], k: int, step: int, top: int) -> Ranks:
    """``ranks`` with mode ``k`` one ``step`` higher (to the next multiple of it), at most ``top``."""
    up = min((ranks[k] // step + 1) * step, top)
    return tuple(up if j == k else r for j, r in enumerate(ranks))
