"""Whole-model rank allocation for ``fc.Budget``: meet a MACs or parameter target, keep the most energy.

methods.md section 2.2 ("Global budget"): greedy allocation maximising the retained spectral energy
under a total-cost constraint (Zhang et al. 2015 style).

For every layer the budget governs we take the singular values of the unfoldings the layer's own
rank rules see (``resolve_rank`` with a recording rule: Tucker-2 the output and input channel
unfoldings, SVD the weight matrix), per group, and normalise ``sigma_i^2`` by ``||W||_F^2``.
Keeping rank ``r`` of mode ``k`` keeps ``sum_{i<r} e_k[i]``; by the HOSVD bound (methods.md
section 8, item 4) ``||W - W_hat||^2 / ||W||^2 <= sum_k (1 - kept_k)`` for Tucker-2, and with
equality for SVD (Eckart-Young), so maximising the total kept energy
minimises the sum of the layers' relative squared-error bounds. CP has no singular values of its
own: a rank-R CP kernel has rank <= R in every unfolding, so rank ``R`` is scored by the least
rank-R energy of the channel unfoldings and the (N kh) x (C kw) one (an upper bound on its fit).

Each layer's cost (MACs per example at its input size, or parameters) is multilinear in its ranks
(e.g. Tucker-2 ``H W C R_in + H' W' k R_in R_out + H' W' R_out N``), so it is fitted exactly from
``count.layer_macs`` of empty layers at ranks {1, 2}: no second copy of the cost formulas.

Greedy: start at rank 1 everywhere, repeatedly raise the (layer, mode) rank with the most energy
per unit of added cost while the total stays within ``fraction * dense total`` and the layer keeps
fewer MACs than its dense form (so ``decompose_`` never skips it) and, under a parameter budget,
fewer parameters. Every increment's cost only grows as ranks grow, so an increment that does not
fit never fits later.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from factorch.count import layer_macs
from factorch.layers import CPConv2d, SVDConv2d, SVDLinear, TuckerConv2d
from factorch.methods import Method
from factorch.rank import Budget, RankRule
from factorch.registry import NotApplicable, Proposal, handler_for
from factorch.report import BudgetResult, LayerReport

MethodsFor = Callable[[str, nn.Module], Optional[Sequence[Method]]]


class _Recorder(RankRule):
    """A rank rule that records every unfolding it is shown, with that mode's full rank."""

    def __init__(self) -> None:
        self.seen: list[tuple[Tensor, int]] = []

    def rank_of(self, matrix: Tensor, full: int) -> int:
        self.seen.append((matrix, full))
        return 1


@dataclass
class Pool:
    """The layers one budget governs, the ranks it gave them and their planned cost."""

    budget: Budget
    names: list[str] = field(default_factory=list)
    dense: int = 0     # total dense cost of the pooled layers
    planned: int = 0   # total cost at the allocated ranks


@dataclass
class _Layer:
    name: str
    method: Method
    full: tuple[int, ...]
    gains: list[list[float]]           # per rank mode: energy kept by rank i+1 beyond rank i
    coef: dict[str, tuple[float, ...]]  # kind -> (a, b0, b1, c): cost = a + b0 r0 + b1 r1 + c r0 r1
    dense: dict[str, int]
    ranks: list[int]

    def cost(self, kind: str, ranks: Sequence[int]) -> float:
        a, b0, b1, c = self.coef[kind]
        r0, r1 = ranks[0], (ranks[1] if len(ranks) > 1 else 1)
        return a + b0 * r0 + b1 * r1 + c * r0 * r1


def _chosen(name: str, module: nn.Module, methods: Sequence[Method]) -> Optional[tuple[Method, Proposal]]:
    """The method ``decompose_`` would use for this layer (the first that applies), with its probe
    proposal at rank 1; None when no method applies or the one that does is not a budget's."""
    for method in methods:
        handler = handler_for(method, module)
        if handler is None:
            continue
        decision = handler(replace(method, rank=1), module)  # applicability does not depend on rank
        if isinstance(decision, NotApplicable):
            continue
        if isinstance(decision, Proposal) and isinstance(method.rank, Budget):
            return method, decision
        return None
    return None


def _squared_singular_values(matrix: Tensor) -> Tensor:
    """sigma_i^2 of ``matrix``, descending: eigenvalues of the smaller Gram matrix (fast, and sigma^2
    is what the energy needs)."""
    m = matrix.to(torch.float64)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return torch.linalg.eigvalsh(gram).clamp_min(0.0).flip(0)


def _square_unfolding(block: Tensor) -> Tensor:
    """(N, C, kh, kw) -> (N kh, C kw): a rank-R CP kernel has rank <= R here too, and this
    unfolding keeps gaining energy past min(N, C), where the channel unfoldings saturate."""
    n, c, kh, kw = block.shape
    return block.permute(0, 2, 1, 3).reshape(n * kh, c * kw)


# The layers whose cost is multilinear in at most two ranks, each scored by its own unfoldings
# (a tensor train's bonds are chosen in sequence by TT-SVD: not this greedy's model).
SUPPORTED = (TuckerConv2d, CPConv2d, SVDLinear, SVDConv2d)

# Layers with one rank over several modes get extra unfoldings that bound their fit (CP only).
EXTRA_UNFOLDINGS: dict[type, Callable[[Tensor], Tensor]] = {CPConv2d: _square_unfolding}


def _energy(proposal: Proposal, module: nn.Module, n_modes: int) -> tuple[tuple[int, ...], list[list[float]]]:
    """Per rank mode: its largest useful rank, and the normalised sigma^2 each rank adds (summed
    over groups, which share one rank). Ranks past the singular values add nothing."""
    recorder = _Recorder()
    proposal.layer_cls.resolve_rank(module, recorder)
    groups = getattr(module, "groups", 1)
    seen = recorder.seen
    energies, fulls = [], []
    for k in range(len(seen) // groups):
        chunk = seen[k * groups:(k + 1) * groups]
        energies.append(torch.stack([_squared_singular_values(m) for m, _ in chunk]).sum(0))
        fulls.append(min(chunk[0][1], len(energies[-1])))
    total = float(energies[0].sum()) or 1.0  # ||W||_F^2, the same for every unfolding
    if len(energies) == n_modes:  # one unfolding per rank mode (Tucker-2, SVD)
        return tuple(fulls), [(e / total).tolist() for e in energies]
    # One rank over several unfoldings (CP): a rank-R kernel has rank <= R in every unfolding, so
    # it keeps at most the least of their rank-R energies; that bound is the score.
    extra = EXTRA_UNFOLDINGS.get(proposal.layer_cls)
    if extra is not None:
        blocks = module.weight.detach().to(torch.float64).chunk(groups)
        energies.append(torch.stack([_squared_singular_values(extra(b)) for b in blocks]).sum(0))
    longest = max(len(e) for e in energies)
    kept = torch.stack([nn.functional.pad(e.cumsum(0), (0, longest - len(e)), value=float(e.sum()))
                        for e in energies]).min(0).values / total
    gains = torch.diff(kept, prepend=kept.new_zeros(1)).clamp_min(0.0)
    return (longest,), [gains.tolist()]


def _fit_costs(proposal: Proposal, module: nn.Module, full: tuple[int, ...], shape: tuple[int, ...]
               ) -> dict[str, tuple[float, ...]]:
    """Exact multilinear cost coefficients from empty layers at ranks in {1, 2} (meta device)."""
    def at(ranks: tuple[int, ...]) -> dict[str, int]:
        rank = ranks if len(ranks) > 1 else ranks[0]
        with torch.device("meta"):
            empty = proposal.layer_cls.empty_like(module, rank)
        return {"macs": layer_macs(empty, shape), "params": sum(p.numel() for p in empty.parameters())}

    two = [2 if f >= 2 else 1 for f in full]  # a mode of full rank 1 never moves: its slope is 0
    coef = {}
    if len(full) == 1:
        f1, f2 = at((1,)), at((two[0],))
        for kind in f1:
            b = (f2[kind] - f1[kind]) if two[0] == 2 else 0.0
            coef[kind] = (f1[kind] - b, b, 0.0, 0.0)
        return coef
    f11, f21, f12, f22 = at((1, 1)), at((two[0], 1)), at((1, two[1])), at((two[0], two[1]))
    for kind in f11:
        c = f22[kind] - f21[kind] - f12[kind] + f11[kind] if two == [2, 2] else 0.0
        b0 = f21[kind] - f11[kind] - c if two[0] == 2 else 0.0
        b1 = f12[kind] - f11[kind] - c if two[1] == 2 else 0.0
        coef[kind] = (f11[kind] - b0 - b1 - c, b0, b1, c)
    return coef


def _plan_layer(name: str, module: nn.Module, method: Method, proposal: Proposal,
                shape: tuple[int, ...]) -> _Layer:
    if proposal.layer_cls not in SUPPORTED:
        raise ValueError(f"{method.rank!r} allocates ranks of {', '.join(c.__name__ for c in SUPPORTED)} layers; "
                         f"layer {name!r} would be a {proposal.layer_cls.__name__} ({method.name}): give that "
                         "method an int, a fraction or a rule instead")
    full, gains = _energy(proposal, module, len(proposal.ranks))
    dense = {"macs": layer_macs(module, shape), "params": sum(p.numel() for p in module.parameters())}
    return _Layer(name, method, full, gains, _fit_costs(proposal, module, full, shape), dense, [1] * len(full))


@dataclass
class Allocation:
    """``methods``: per budget-governed layer, its method with the allocated int ranks."""

    methods: dict[str, Method] = field(default_factory=dict)
    pools: list[Pool] = field(default_factory=list)


def allocate(candidates: Sequence[tuple[str, nn.Module]], methods_for: MethodsFor,
             shape_of: Callable[[str, nn.Module], tuple[int, ...]], exact_shapes: bool) -> Allocation:
    """Resolve every ``Budget`` rank among ``candidates`` to per-layer ints.

    ``methods_for(name, module)``: the methods the config gives the layer (None if excluded);
    ``shape_of``: the input shape (no batch) ``decompose_`` costs the layer at; ``exact_shapes``:
    whether those are the real sizes (a MACs budget needs them). Equal budgets share one pool.
    """
    by_budget: dict[Budget, list[_Layer]] = {}
    for name, module in candidates:
        methods = methods_for(name, module)
        if not methods or not any(isinstance(m.rank, Budget) for m in methods):
            continue
        chosen = _chosen(name, module, methods)
        if chosen is None:
            continue
        method, proposal = chosen
        if method.rank.kind == "macs" and not exact_shapes:
            raise ValueError(f"{method.rank!r} needs example_input: a layer's MACs depend on its input size")
        by_budget.setdefault(method.rank, []).append(_plan_layer(name, module, method, proposal, shape_of(name, module)))
    result = Allocation()
    for budget, layers in by_budget.items():
        result.pools.append(_greedy(budget, layers))
        for layer in layers:
            rank = tuple(layer.ranks) if len(layer.ranks) > 1 else layer.ranks[0]
            result.methods[layer.name] = replace(layer.method, rank=rank)
    return result


def _greedy(budget: Budget, layers: list[_Layer]) -> Pool:
    """Raise ranks by best energy per unit cost while the pool's total stays within the budget."""
    kind = budget.kind
    caps = ("macs", "params") if kind == "params" else ("macs",)  # decompose_ skips a layer with no fewer MACs
    dense_total = sum(layer.dense[kind] for layer in layers)
    target = budget.fraction * dense_total
    total = sum(layer.cost(kind, layer.ranks) for layer in layers)
    if total > target:
        raise ValueError(f"{budget!r} cannot be met: rank 1 in each of the {len(layers)} layers it governs "
                         f"already keeps {total / dense_total:.4f} of their {kind}; valid fractions here are "
                         f"in [{math.ceil(total / dense_total * 1e4) / 1e4}, 1]")
    heap: list[tuple[float, int, int, int]] = []
    version = [0] * len(layers)

    def push(i: int) -> None:
        layer = layers[i]
        for k, r in enumerate(layer.ranks):
            gain = layer.gains[k][r] if r < min(layer.full[k], len(layer.gains[k])) else 0.0
            if gain <= 0.0:
                continue
            delta = layer.cost(kind, _bumped(layer.ranks, k)) - layer.cost(kind, layer.ranks)
            heapq.heappush(heap, (-gain / max(delta, 1e-12), i, k, version[i]))

    for i in range(len(layers)):
        push(i)
    while heap:
        _, i, k, v = heapq.heappop(heap)
        if v != version[i]:
            continue  # the layer changed since this entry was pushed
        layer = layers[i]
        new = _bumped(layer.ranks, k)
        delta = layer.cost(kind, new) - layer.cost(kind, layer.ranks)
        if total + delta > target or any(layer.cost(c, new) >= layer.dense[c] for c in caps):
            continue  # costs only grow with ranks: this increment never fits later
        layer.ranks, total = new, total + delta
        version[i] += 1
        push(i)
    return Pool(budget, [layer.name for layer in layers], dense_total, int(round(total)))


def _bumped(ranks: list[int], k: int) -> list[int]:
    return [r + 1 if j == k else r for j, r in enumerate(ranks)]


def achieved(pool: Pool, rows: Sequence[LayerReport]) -> BudgetResult:
    """The pool's achieved fraction from the final report rows (a layer left dense counts as dense)."""
    kind, names = pool.budget.kind, set(pool.names)
    mine = [r for r in rows if r.name in names]
    before = sum(getattr(r, f"{kind}_before") for r in mine)
    after = sum(getattr(r, f"{kind}_after" if r.decomposed else f"{kind}_before") for r in mine)
    return BudgetResult(str(pool.budget), kind, pool.budget.fraction, len(mine), before, after,
                        sum(not r.decomposed for r in mine))
