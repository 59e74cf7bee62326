"""``fc.Budget(latency=f, profiler=...)``: ranks chosen so that the model's *measured* latency on
this machine is at most ``f`` of the dense model's (``docs/math.md``, "Budgets").

1. **The dense model** is timed whole (``profiler``: batch size, threads, device, layout), and
   every layer the budget governs, dense, at its own input size.
2. **Latency tables**: each governed layer's factorized form is built at a few ranks along its
   proportional path (rank 1 and the fractions ``SAMPLES`` of each mode's full rank; ``empty_at``:
   timing does not depend on the values) and timed interleaved with its dense form. The latency
   at other ranks is interpolated linearly in the layer's MACs between the measured points (a
   factorized layer's time grows with its MACs, but not in proportion: each of its 2-4 kernels has
   a fixed cost). Every measurement is kept for the process (``CACHE``, keyed by the layer's
   geometry, ranks, input shape, the profiler's settings and the device): layers of the same
   geometry (ResNet-50 has 53 governed layers of 16 geometries) are timed once.
3. **The greedy of the MACs budget** (``factorch.rank.budget.allocate``, kept energy per unit of
   cost) with cost = that latency and the governed layers' target ``f T_model - T_rest``, where
   ``T_rest = T_model - sum of their dense latencies`` is what the budget cannot change (other
   layers, normalisation, activations, pooling).
4. **Correction**: the model with the allocated ranks is timed whole next to the dense one; the
   governed target moves by the miss ``(f - achieved) T_model`` (then along the secant of the last
   two rounds, at most twice the miss; once rounds lie on both sides of ``f``, between the closest
   on each side) and is allocated again, at most ``ROUNDS`` times; of the allocations measured, the
   one closest to ``f`` is kept, a measured fraction over ``f`` counting twice its distance.
5. After ``decompose_`` built the layers, the model is timed once more next to the dense one, and
   the budget's report line (``BudgetResult``) gives that achieved fraction.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from factorch.measure.latency import Latency, Profiler, compare
from factorch.rank import Budget, Item, Pool, allocate
from factorch.rank.space import Ranks
from factorch.report import BudgetResult, LayerReport
from factorch.surgery import swap

SAMPLES = (0.1, 0.25, 0.5, 0.75)  # fractions of each mode's full rank timed per layer (besides rank 1)
ROUNDS = 4                        # allocations measured whole at most
TOLERANCE = 0.02                  # a measured fraction this close to the target stops the correction
CACHE: dict[tuple, float] = {}    # seconds per call, per (module geometry, ranks, shape, profiler, device)

Builders = dict  # layer name -> (its dense module, the registry's Candidate: the class and options to build)


@dataclass(frozen=True)
class ModelTiming:
    """What a latency budget times: the model (dense, as given) and one example input with its batch."""

    model: nn.Module
    example_input: Any


@dataclass
class LatencyPool(Pool):
    """A latency budget's pool: its layers, the dense model's latency (``dense``, seconds), the
    planned latency of the governed layers, and each allocation round (target, planned, measured)."""

    timing: Optional[ModelTiming] = None
    profiler: Profiler = field(default_factory=Profiler)
    batch: int = 1
    rounds: list[tuple[float, float]] = field(default_factory=list)  # (planned, measured) fraction per round


def profiler_of(budget: Budget) -> Profiler:
    return budget.profiler or Profiler()


def allocate_latency(budget: Budget, items: list[Item], builders: Builders,
                     timing: Optional[ModelTiming]) -> tuple[dict[str, Optional[Ranks]], LatencyPool]:
    """Ranks per layer name (None: no rank makes the layer faster than dense) meeting ``budget``
    (see the module docstring); ``builders``: per layer, its dense module and the candidate
    (``factorch.registry.Candidate``) whose class and options build it."""
    if timing is None:
        raise ValueError(f"{budget!r} needs example_input: the model is timed at its input size")
    profiler = profiler_of(budget)
    batch = profiler.batch or _batch(timing.example_input)
    shape = tuple(_first(timing.example_input).shape[1:])
    t_model = _time({"dense": timing.model}, shape, profiler, batch)["dense"]
    for it in items:
        _table(it, *builders[it.name], profiler, batch)
    ones = {it.name: it.space.smallest() for it in items}  # rank 1 (``step`` on a rank grid) per mode
    usable = [it for it in items if it.cost("latency", ones[it.name]) < it.dense_latency and
              it.cost("macs", ones[it.name]) < it.dense("macs")]
    pool = LatencyPool(budget, [it.name for it in usable], t_model, 0, timing=timing, profiler=profiler, batch=batch)
    result: dict[str, Optional[Ranks]] = {it.name: None for it in items}
    if not usable:
        return result, pool
    f = budget.fraction
    rest = max(t_model - sum(it.dense_latency for it in usable), 0.0)
    floor = sum(it.cost("latency", ones[it.name]) for it in usable)
    target = f * t_model - rest
    if target < floor:
        raise ValueError(f"{budget!r} cannot be met here: the {len(usable)} layers it governs still take "
                         f"{floor * 1e3:.3g} ms at their smallest ranks and the rest of the model "
                         f"{rest * 1e3:.3g} ms of the dense "
                         f"{t_model * 1e3:.3g} ms (batch {batch}); the lowest reachable fraction is about "
                         f"{(floor + rest) / t_model:.2f}")
    ceiling = sum(it.dense_latency for it in usable)
    tried: list[tuple[float, dict, float, float]] = []  # (measured fraction, ranks, planned seconds, target)
    for _ in range(ROUNDS):
        ranks, planned = allocate(budget, usable, target=target)
        t = _time({"dense": timing.model, "decomposed": _candidate(timing.model, ranks, builders)},
                  shape, profiler, batch)
        achieved = t["decomposed"] / t["dense"]
        tried.append((achieved, ranks, planned.planned, target))
        pool.rounds.append(((rest + planned.planned) / t_model, achieved))
        if abs(achieved - f) <= TOLERANCE or (achieved > f and target <= floor):
            break
        target = min(max(_next_target(tried, f, t["dense"]), floor), ceiling)
    # the round closest to f, a fraction over it counting double: whole-model timings move by a few
    # per cent between calls, so "the slowest at or under f" kept a round far under f when two close
    # ones measured just over it (0.55, 0.54, 0.37 -> 0.37)
    achieved, ranks, planned, _ = min(tried, key=lambda r: max(f - r[0], 2 * (r[0] - f)))
    result.update(ranks)
    pool.planned = planned
    return result, pool


def _next_target(tried: list[tuple[float, dict, float, float]], f: float, t_dense: float) -> float:
    """The governed layers' next target. Once the rounds bracket ``f`` (one measured above it, one
    at or below), the secant through the closest round on each side (regula falsi: the root stays
    bracketed, so a flat secant of two rounds on the same side cannot throw the target far past
    it); before that, the secant through the last two rounds, or the miss ``(f - achieved)
    T_dense``; a step is at most twice the miss's."""
    achieved, _, _, target = tried[-1]
    miss = (f - achieved) * t_dense
    above = [r for r in tried if r[0] > f]
    below = [r for r in tried if r[0] <= f]
    if above and below:
        (a0, _, _, g0), (a1, _, _, g1) = min(above, key=lambda r: r[0]), max(below, key=lambda r: r[0])
        if abs(a0 - a1) > 1e-6:
            return g1 + (f - a1) * (g0 - g1) / (a0 - a1)
    if len(tried) > 1:
        a0, _, _, g0 = tried[-2]
        if abs(achieved - a0) > 1e-6 and (target - g0) / (achieved - a0) > 0:
            step = (f - achieved) * (target - g0) / (achieved - a0)
            return target + max(min(step, 2 * abs(miss)), -2 * abs(miss))
    return target + miss


def result(pool: LatencyPool, rows: Sequence[LayerReport], replacements: dict[str, nn.Module]) -> BudgetResult:
    """The budget's report line: the built model timed whole next to the dense one."""
    timing, names = pool.timing, set(pool.names)
    mine = [r for r in rows if r.name in names]
    shape = tuple(_first(timing.example_input).shape[1:])
    model = copy.deepcopy(timing.model)
    swap(model, {n: m for n, m in replacements.items()})
    t = _time({"dense": timing.model, "decomposed": model}, shape, pool.profiler, pool.batch)
    p = pool.profiler
    how = f"batch {pool.batch}" + (f", {p.threads} thread{'s' * (p.threads > 1)}" if p.threads else "") + \
        (f", {p.device}" if p.device else "") + (", channels_last" if p.channels_last else "")
    rounds = ", ".join(f"{m:.2f}" for _, m in pool.rounds)
    note = f"{how}; allocation rounds measured {rounds}"
    return BudgetResult(str(pool.budget), "latency", pool.budget.fraction, len(mine), t["dense"], t["decomposed"],
                        sum(not r.decomposed for r in mine), note=note)


def _table(item: Item, dense: nn.Module, candidate: Any, profiler: Profiler, batch: int) -> None:
    """Time ``dense`` and its factorized form at rank 1 (the grid's smallest) and the ``SAMPLES`` (cached), and give
    ``item`` its interpolated latency (``item.latency``) and its dense one."""
    full = item.space.full
    on_grid = item.space.aligned  # with the method's ``multiple``, timed at ranks it can choose
    ranks = sorted({on_grid(tuple(max(1, round(s * f)) for f in full), False) for s in SAMPLES} |
                   {item.space.smallest()},
                   key=lambda r: item.cost("macs", r))
    dense_macs = item.dense("macs")
    ranks = [r for r in ranks if item.cost("macs", r) < dense_macs] or ranks[:1]
    keys = {"dense": _key(dense, None, (), item.shape, profiler, batch)}
    keys.update({r: _key(dense, candidate, r, item.shape, profiler, batch) for r in ranks})
    todo = {k: v for k, v in keys.items() if v not in CACHE}
    if todo:
        variants = {str(k): dense if k == "dense" else build(candidate, dense, k) for k in todo}
        times = _time(variants, item.shape, profiler, batch)
        for k, key in todo.items():
            CACHE[key] = times[str(k)]
    points = sorted((item.cost("macs", r), CACHE[keys[r]]) for r in ranks)
    item.dense_latency = CACHE[keys["dense"]]
    item.latency = lambda r, points=_monotone(points), it=item: _interpolate(points, it.cost("macs", r))


def build(candidate: Any, dense: nn.Module, ranks: Ranks) -> nn.Module:
    """``candidate``'s layer for ``dense`` at ``ranks``, for timing only: built on the meta device
    (no decomposition, no initialisation pass), then given random finite values where ``dense`` is."""
    ref = next(dense.parameters())
    with torch.device("meta"):
        layer = candidate.layer_cls.empty_at(dense, ranks, **candidate.options)
    layer = layer.to_empty(device=ref.device).to(dtype=ref.dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.1)
    return layer.eval()


def _monotone(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Measured (MACs, seconds), the seconds made non-decreasing in MACs (timing noise aside, more
    MACs of the same layer never run faster: the greedy needs a cost that grows with the ranks)."""
    out, top = [], 0.0
    for m, t in points:
        top = max(top, t)
        out.append((m, top))
    return out


def _interpolate(points: list[tuple[float, float]], macs: float) -> float:
    """Piecewise linear in MACs through ``points``; proportional below the first, the last
    segment's slope beyond the last (one point: proportional)."""
    if len(points) == 1 or macs <= points[0][0]:
        m0, t0 = points[0]
        return t0 * macs / m0 if m0 else t0
    for (m0, t0), (m1, t1) in zip(points, points[1:]):
        if macs <= m1:
            return t0 + (t1 - t0) * (macs - m0) / (m1 - m0) if m1 > m0 else t1
    (m0, t0), (m1, t1) = points[-2], points[-1]
    return t1 + (t1 - t0) * (macs - m1) / (m1 - m0) if m1 > m0 else t1


def _key(dense: nn.Module, candidate: Any, ranks: Ranks, shape: tuple[int, ...], profiler: Profiler,
         batch: int) -> tuple:
    """The cache key of one measurement: what is timed (the dense layer's geometry and dtype; the
    factorized class, its options and ranks), where, and how (every profiler setting, its clock too)."""
    ref = next(dense.parameters())
    what = (repr(dense), str(ref.dtype), str(ref.device))
    if candidate is not None:
        what += (candidate.layer_cls.__name__, repr(sorted(candidate.options.items())), tuple(ranks))
    settings = dataclasses.astuple(dataclasses.replace(profiler, timer=None))
    device = profiler.device or str(ref.device)
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    return what + (tuple(shape), batch, settings, profiler.timer, device, name)


def _candidate(model: nn.Module, ranks: dict[str, Optional[Ranks]], builders: Builders) -> nn.Module:
    """A copy of ``model`` with each governed layer replaced by its factorized form at ``ranks``
    (values random: only its timing matters)."""
    out = copy.deepcopy(model)
    swap(out, {n: build(builders[n][1], builders[n][0], r) for n, r in ranks.items() if r is not None})
    return out


def _time(variants: dict[str, nn.Module], shape: tuple[int, ...], profiler: Profiler, batch: int) -> dict[str, float]:
    t = compare(variants, shape, profiler, batch)
    return {k: _seconds(v, profiler) for k, v in t.items()}


def _seconds(latency: Latency, profiler: Profiler) -> float:
    return latency.forward_backward if profiler.backward else latency.forward


def _first(example_input: Any) -> torch.Tensor:
    return example_input[0] if isinstance(example_input, tuple) else example_input


def _batch(example_input: Any) -> int:
    x = _first(example_input)
    return int(x.shape[0]) if x.dim() > 0 else 1
