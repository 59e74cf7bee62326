"""The verbs: ``decompose_`` (in place), ``plan`` (dry run, same report) and ``reconstruct_``.

Transactional: every replacement is built (and every error raised) before the first swap, so a
failure leaves the model exactly as it was; with ``example_input``, a swap after which the model
does not run, or does not call a new layer, is undone (``factorch.usage``: layers a parent uses
without calling them are left dense before that).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

import factorch.handlers  # noqa: F401  (fills the registry)
from factorch.calibration import Calibration, as_calibration, layer_whitenings, to_model
from factorch.measure.count import count, layer_macs
from factorch.calibration.safety import select, weight_error
from factorch.latency_budget import LatencyPool, ModelTiming, result as latency_result
from factorch.layers.base import FactorizedLayer
from factorch.methods import Method
from factorch.measure.latency import Profiler, as_profiler, compare
from factorch.decompositions.svd_cost import GEMM_SECONDS
from factorch.progress import Step, track
from factorch.rank import RankRule
from factorch.registry import (MIN_SHARE, Context, Decision, Floor, decide_all, layer_label, layer_types,
                               nominal_shape)
from factorch.report import BudgetResult, LayerReport, Report
from factorch.selection import Config, Selection
from factorch.surgery import FilterFn, swap, walk
from factorch.usage import observe, swap_checked

Timing = Optional[tuple[Profiler, int]]  # (how to time, batch of example_input)


Calibrated = Union[None, Calibration, list, tuple, torch.Tensor]


def decompose_(model: nn.Module, methods: Config, *, filter_fn: Optional[FilterFn] = None,
               example_input: Any = None, keep_if_faster: Union[bool, Profiler] = False,
               from_scratch: bool = False, calibration: Calibrated = None, min_share: float = MIN_SHARE) -> Report:
    """Replace the model's layers by factorized ones, in place; return the per-layer report.

    ``methods``: a method config, a list (the first method that handles a layer usefully is
    used) or a dict (see ``factorch.selection``). ``filter_fn(module, name)`` may exclude layers.
    With ``example_input`` the MACs in the report (and the "fewer MACs" test) use each layer's real
    input size, otherwise a nominal 32x32 input per conv and the report shows no conv MACs. A
    method whose ranks come out 0 or would not reduce the layer's MACs is passed over for the next
    one in the list; a layer no method handles usefully stays dense, with the reasons in the report.

    ``from_scratch=True``: replace every handled layer by a freshly initialised factorized layer
    (its kernel has the variance of PyTorch's default init) instead of decomposing its weights,
    to train in factorized form from the first step. Ranks: ints, tuples, fractions or
    ``fc.Budget`` (which then rates every rank unit alike); rules (EVBMF, Energy, Tolerance) read
    trained weights and are refused.

    A rank of ``fc.Budget(macs=f)`` / ``fc.Budget(params=f)`` is shared by every layer it governs
    (see ``fc.Budget``): ranks are allocated across them first; the report gives the achieved
    fraction. ``keep_if_faster=True`` (or a ``fc.Profiler(batch=..., backward=..., device=...)``)
    times each candidate dense and factorized at its real input size (needs ``example_input``;
    the batch is the profiler's or ``example_input``'s) and keeps the dense layer where the
    factorized one is not faster; the report gives both latencies.

    ``calibration``: a few batches of the model's inputs (tensors or ``(x, y)`` tuples; no labels
    needed), or a ``fc.Calibration`` (damping, sequential correction). Factors are then fitted to
    each layer's outputs on these inputs instead of to its weights, for every method whose layer
    has a single input-channel factor (SVD, Tucker-2, CP; tensor trains keep weight-only factors),
    and rank rules and budgets read the whitened spectra (``Energy`` = share of the output energy
    kept). The last quarter of the batches is held out: a layer keeps the data-aware factors only
    where the model's top-1 predictions on it agree with the dense model's more often than with
    weight-only factors at the same ranks, or as often with a KL divergence no larger
    (``factorch.calibration.safety``); the report gives both candidates' agreement, KL and output
    error. Without
    ``example_input``, the first calibration sample sets the input size for MACs.

    ``min_share``: a layer whose dense cost is below this share of the model's MACs (of its
    parameters without ``example_input``) stays dense, with the reason, unless a dict config names
    it: its decomposition would save less than that, and a tiny head decomposed at rank 1 costs
    accuracy and buys nothing (a budget allocates over the other layers). A layer whose weight is
    all zero stays dense too. 0 lets every layer a method handles be decomposed.
    """
    report, replacements = _decide(model, methods, filter_fn, example_input, keep_if_faster, from_scratch,
                                   calibration, min_share)
    swap_checked(model, replacements, example_input)
    return report


def plan(model: nn.Module, methods: Config, *, filter_fn: Optional[FilterFn] = None,
         example_input: Any = None, keep_if_faster: Union[bool, Profiler] = False,
         from_scratch: bool = False, calibration: Calibrated = None, min_share: float = MIN_SHARE) -> Report:
    """The report ``decompose_`` would return (decompositions, timings and calibration checks
    included); the model is not changed."""
    return _decide(model, methods, filter_fn, example_input, keep_if_faster, from_scratch, calibration,
                   min_share)[0]


def check(model: nn.Module, methods: Config, *, filter_fn: Optional[FilterFn] = None,
          example_input: Any = None, from_scratch: bool = False) -> None:
    """Raise the ``ValueError`` that ``decompose_``/``plan`` would raise for these settings on this
    model, without decomposing anything: a config naming an unknown layer, a tuple rank above a
    layer's full rank, a rule given for a from-scratch decomposition. What depends on the weights
    at the time of the decomposition (rank rules, budgets: they read spectra) is left to it. A
    training run calls this before its first step, so a bad setting never costs epochs."""
    selection = Selection(methods)
    candidates = [(n, m) for n, m in walk(model) if isinstance(m, layer_types())]
    selection.check_names([n for n, _ in candidates])

    def methods_for(name: str, module: nn.Module) -> Optional[list[Method]]:
        if filter_fn is not None and not filter_fn(module, name):
            return None
        given = selection.methods_for(name)
        return [m for m in given or [] if from_scratch or not isinstance(m.rank, RankRule)] or None

    seen = observe(model, candidates, example_input)
    decide_all(candidates, methods_for,
               lambda n, m: Context(seen.shapes.get(n) or nominal_shape(m), nominal=n not in seen.shapes,
                                    from_scratch=from_scratch, explicit=selection.is_explicit(n),
                                    blocked=seen.blocked.get(n)),
               exact_shapes=example_input is not None)


def reconstruct_(model: nn.Module) -> list[str]:
    """Replace every factorized layer by its equivalent dense layer, built from the current
    (possibly trained) factors; returns the names of the layers rebuilt. A layer that cannot be
    rebuilt (a missing factor, NaN/Inf factors) is one ``ValueError`` naming it, and the model is
    left as it was."""
    replacements = {name: _rebuilt(name, m) for name, m in walk(model) if isinstance(m, FactorizedLayer)}
    swap(model, replacements)
    return list(replacements)


def _rebuilt(name: str, layer: FactorizedLayer) -> nn.Module:
    what = f"layer {name!r} ({type(layer).__name__})"
    try:
        dense = layer.to_dense()
    except (AttributeError, KeyError, IndexError, RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"{what} cannot be rebuilt as a dense layer: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}") from None
    if not all(bool(torch.isfinite(p).all()) for p in dense.parameters()):
        raise ValueError(f"{what} has NaN or Inf factors: its dense weight would be NaN/Inf; refusing to rebuild it")
    return dense


def _decide(model: nn.Module, methods: Config, filter_fn: Optional[FilterFn], example_input: Any,
            keep_if_faster: Union[bool, Profiler], from_scratch: bool = False, calibration: Calibrated = None,
            min_share: float = MIN_SHARE) -> tuple[Report, dict[str, nn.Module]]:
    if not any(True for _ in model.children()):
        raise ValueError(f"decompose_ takes a model that contains layers, got a bare {type(model).__name__}; "
                         "for one layer use fc.layers.<Layer>.from_dense")
    meta = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if meta is not None:
        raise ValueError(f"the model's weights are on the meta device (e.g. {meta!r}): they hold no values to "
                         "decompose; materialise them first (model.to_empty(device='cpu'), then load a state_dict)")
    selection = Selection(methods)
    calib = as_calibration(calibration)
    if calib is not None and from_scratch:
        raise ValueError("calibration fits factors to a layer's inputs; from_scratch layers are freshly "
                         "initialised, with no factors to fit: give one or the other")
    profiler = as_profiler(keep_if_faster)
    if profiler is not None and example_input is None:
        raise ValueError("keep_if_faster needs example_input: each layer is timed at its real input size")
    kinds = layer_types()
    candidates = [(n, m) for n, m in walk(model) if isinstance(m, kinds)]
    selection.check_names([n for n, _ in candidates])

    def methods_for(name: str, module: nn.Module) -> Optional[list[Method]]:
        if filter_fn is not None and not filter_fn(module, name):
            return None
        return selection.methods_for(name)

    whitening, notes, order = {}, {}, []
    if calib is not None:
        targets = {n: m for n, m in candidates if methods_for(n, m)}
        whitening, notes, order = layer_whitenings(model, calib, targets, example_input)
        if example_input is None:
            example_input = to_model(model, calib.batches[0][:1])
    seen = observe(model, candidates, example_input)
    shapes = seen.shapes
    floor = _floor(model, example_input, min_share)

    def context_of(name: str, module: nn.Module) -> Context:
        shape = shapes.get(name)
        return Context(shape or nominal_shape(module), nominal=shape is None and not isinstance(module, nn.Linear),
                       from_scratch=from_scratch, explicit=selection.is_explicit(name), whitening=whitening.get(name),
                       floor=floor, blocked=seen.blocked.get(name))

    on = ModelTiming(model, example_input) if example_input is not None else None  # what a latency budget times
    planned = decide_all(candidates, methods_for, context_of, exact_shapes=example_input is not None, timing=on)
    timing = (profiler, _batch_of(example_input)) if profiler is not None else None
    rows, replacements = [], {}
    work = None if from_scratch else lambda item: _step(item[0], planned.decisions[item[0]])
    for name, module in track(candidates, desc="decompose", work=work):
        row, new = _row(name, module, planned.decisions[name], shapes.get(name), filter_fn, selection, timing,
                        from_scratch, calib is not None)
        rows.append(row)
        if new is not None:
            replacements[name] = new
    if calib is not None:
        rows, replacements = select(model, rows, replacements, planned.decisions, calib, order, notes)
    budgets = [latency_result(pool, rows, replacements) if isinstance(pool, LatencyPool) else
               BudgetResult.of(pool, rows) for pool in planned.pools]
    return Report(rows, budgets, calibration=calib.describe() if calib is not None else None), replacements


def _step(name: str, decision: Optional[Decision]) -> Optional[Step]:
    """What building ``name``'s replacement costs, for the progress line: the decomposition's cost
    model (``RankSpace.cost_to_compute``) plus rebuilding its kernel for the error column (about
    ``dense params x largest rank`` multiply-adds); None when nothing is built."""
    if decision is None or decision.proposal is None or decision.space is None:
        return None
    space, ranks = decision.space, decision.ranks
    seconds, how = space.cost_to_compute(ranks)
    seconds += GEMM_SECONDS * space.dense_params * max(ranks)
    shown = ranks[0] if len(ranks) == 1 else ranks
    return Step(f"{name} ({how or decision.method.name}, rank {shown})", seconds)


def _floor(model: nn.Module, example_input: Any, min_share: float) -> Optional[Floor]:
    """``decompose_``'s ``min_share`` of the model's MACs (its parameters without an example input)."""
    if isinstance(min_share, bool) or not isinstance(min_share, (int, float)) or not 0 <= min_share < 1:
        raise ValueError(f"min_share must be a share of the model's cost in [0, 1), got {min_share!r}")
    if not min_share:
        return None
    if example_input is not None:
        return Floor(min_share, count(model, example_input).macs, "MACs")
    return Floor(min_share, sum(p.numel() for p in model.parameters()), "parameters")


def _batch_of(example_input: Any) -> int:
    first = example_input[0] if isinstance(example_input, tuple) else example_input
    return int(first.shape[0]) if first.dim() > 0 else 1


def _row(name: str, module: nn.Module, decision: Optional[Decision], shape: Optional[tuple[int, ...]],
         filter_fn: Optional[FilterFn], selection: Selection, timing: Timing, from_scratch: bool,
         calibrated: bool = False) -> tuple[LayerReport, Optional[nn.Module]]:
    """The report row for one layer and, if it is replaced, its new module (built here)."""
    params = sum(p.numel() for p in module.parameters())
    known = shape if shape is not None else (nominal_shape(module) if isinstance(module, nn.Linear) else None)
    row = dict(name=name, layer=layer_label(module), params_before=params,
               macs_before=layer_macs(module, known) if known else None)
    if decision is None:
        excluded = filter_fn is not None and not filter_fn(module, name)
        return LayerReport(**row, skipped="excluded by filter_fn" if excluded else "left dense by the config"), None
    row.update(method=decision.method.name if decision.method is not None else None, ranks=decision.ranks,
               params_after=decision.params_after, note=decision.note or None)
    if row["macs_before"] is not None:
        row["macs_after"] = decision.macs_after
    if decision.proposal is None:
        return LayerReport(**row, skipped=decision.skipped), None
    proposal = decision.proposal
    if calibrated and isinstance(decision.method.rank, RankRule):
        row["rank_spectra"] = "whitened" if proposal.whitening is not None else "weights"
    if from_scratch:
        return LayerReport(**row), proposal.fresh(module)
    try:
        new = proposal.build(module)
    except ValueError as e:
        raise ValueError(f"layer {name!r} ({layer_label(module)}): {e}") from None
    row["error"] = weight_error(module, new)
    if timing is not None and shape is not None and isinstance(module, nn.MultiheadAttention):
        row["note"] = "; ".join(n for n in (row["note"], "keep_if_faster: not timed (an attention takes several "
                                            "inputs); kept factorized") if n)
        return LayerReport(**row), new
    if timing is not None and shape is not None:
        return _keep_faster(row, module, new, shape, *timing)
    return LayerReport(**row), new


def _keep_faster(row: dict, module: nn.Module, new: nn.Module, shape: tuple[int, ...], profiler: Profiler,
                 batch: int) -> tuple[LayerReport, Optional[nn.Module]]:
    """Time dense and factorized side by side (same input, interleaved, median); keep the faster."""
    t = compare({"dense": module, "factorized": new}, shape, profiler, batch)
    dense, fact = t["dense"], t["factorized"]
    d, f = (dense.forward_backward, fact.forward_backward) if profiler.backward else (dense.forward, fact.forward)
    row.update(latency_dense=d, latency_factorized=f)
    if f < d:
        return LayerReport(**row), new
    what = "forward+backward" if profiler.backward else "forward"
    return LayerReport(**row, skipped=f"kept dense: factorized runs at {d / f:.2f}x the dense speed here "
                                      f"({what}, batch {profiler.batch or batch}: dense {d * 1e3:.3g} ms, "
                                      f"factorized {f * 1e3:.3g} ms)"), None
