"""The verbs: ``decompose_`` (in place), ``plan`` (dry run, same report) and ``reconstruct_``.

Transactional: every replacement is built (and every error raised) before the first swap, so a
failure leaves the model exactly as it was.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from factorch import handlers as _handlers  # noqa: F401  (fills the registry)
from factorch.budget import achieved, allocate
from factorch.count import layer_macs, probe
from factorch.layers.base import FactorizedLayer
from factorch.methods import Method
from factorch.profile import Profiler, as_profiler, compare
from factorch.progress import track
from factorch.rank import Budget
from factorch.registry import NotApplicable, Proposal, Skip, handler_for, layer_types
from factorch.report import LayerReport, Report
from factorch.selection import Config, Selection
from factorch.surgery import FilterFn, swap, walk

NOMINAL_SIZE = 32  # conv input side used to test "fewer MACs" when no example_input is given
Timing = Optional[tuple[Profiler, int]]  # (how to time, batch of example_input)


def decompose_(model: nn.Module, methods: Config, *, filter_fn: Optional[FilterFn] = None,
               example_input: Any = None, keep_if_faster: Union[bool, Profiler] = False) -> Report:
    """Replace the model's layers by factorized ones, in place; return the per-layer report.

    ``methods``: a method config, a list (the first method that handles a layer is used) or a
    dict (see ``factorch.selection``). ``filter_fn(module, name)`` may exclude layers. With
    ``example_input`` the MACs in the report (and the "fewer MACs" test) use each layer's real
    input size, otherwise a nominal 32x32 input per conv and the report shows no conv MACs.
    A layer stays dense, with the reason in the report, when its ranks come out 0 or would not
    reduce its MACs, or when no method handles it.

    A rank of ``fc.Budget(macs=f)`` / ``fc.Budget(params=f)`` is shared by every layer it governs
    (see ``fc.Budget``): ranks are allocated across them first; the report gives the achieved
    fraction. ``keep_if_faster=True`` (or a ``fc.Profiler(batch=..., backward=..., device=...)``)
    times each candidate dense and factorized at its real input size (needs ``example_input``;
    the batch is the profiler's or ``example_input``'s) and keeps the dense layer where the
    factorized one is not faster; the report gives both latencies.
    """
    report, replacements = _decide(model, methods, filter_fn, example_input, keep_if_faster)
    swap(model, replacements)
    return report


def plan(model: nn.Module, methods: Config, *, filter_fn: Optional[FilterFn] = None,
         example_input: Any = None, keep_if_faster: Union[bool, Profiler] = False) -> Report:
    """The report ``decompose_`` would return (decompositions and timings included); the model
    is not changed."""
    return _decide(model, methods, filter_fn, example_input, keep_if_faster)[0]


def reconstruct_(model: nn.Module) -> list[str]:
    """Replace every factorized layer by its equivalent dense layer, built from the current
    (possibly trained) factors; returns the names of the layers rebuilt."""
    replacements = {name: m.to_dense() for name, m in walk(model) if isinstance(m, FactorizedLayer)}
    swap(model, replacements)
    return list(replacements)


def _layer_label(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        g = f" g{module.groups}" if module.groups > 1 else ""
        s = f" s{module.stride[0]}" if module.stride != (1, 1) else ""
        return f"conv{kh}x{kw} {module.in_channels}->{module.out_channels}{s}{g}"
    if isinstance(module, nn.Linear):
        return f"linear {module.in_features}->{module.out_features}"
    return type(module).__name__


def _input_shapes(model: nn.Module, example_input: Any, names: set[str]) -> dict[str, tuple[int, ...]]:
    """Each named layer's input shape (batch dim dropped) from one eval-mode, no-grad forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = {n: m for n, m in model.named_modules() if n in names}
    probe(model, example_input, modules, lambda n, m, args, out: shapes.setdefault(n, tuple(args[0].shape[1:])))
    return shapes


def _nominal_shape(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, nn.Linear):
        return (module.in_features,)
    reach = max(d * (k - 1) + 1 for d, k in zip(module.dilation, module.kernel_size))
    side = max(NOMINAL_SIZE, reach)
    return (module.in_channels, side, side)


def _decide(model: nn.Module, methods: Config, filter_fn: Optional[FilterFn], example_input: Any,
            keep_if_faster: Union[bool, Profiler]) -> tuple[Report, dict[str, nn.Module]]:
    if not any(True for _ in model.children()):
        raise ValueError(f"decompose_ takes a model that contains layers, got a bare {type(model).__name__}; "
                         "for one layer use fc.layers.<Layer>.from_dense")
    selection = Selection(methods)
    profiler = as_profiler(keep_if_faster)
    if profiler is not None and example_input is None:
        raise ValueError("keep_if_faster needs example_input: each layer is timed at its real input size")
    kinds = layer_types()
    candidates = [(n, m) for n, m in walk(model) if isinstance(m, kinds)]
    selection.check_names([n for n, _ in candidates])
    shapes = _input_shapes(model, example_input, {n for n, _ in candidates}) if example_input is not None else {}
    allocation = allocate(  # whole-model rank rules (fc.Budget) are resolved before per-layer decisions
        candidates, lambda n, m: None if filter_fn is not None and not filter_fn(m, n) else selection.methods_for(n),
        lambda n, m: shapes.get(n) or _nominal_shape(m), exact_shapes=example_input is not None)
    timing = (profiler, _batch_of(example_input)) if profiler is not None else None
    rows, replacements = [], {}
    for name, module in track(candidates, desc="decompose"):
        row, new = _decide_layer(name, module, selection, filter_fn, shapes.get(name),
                                 allocation.methods.get(name), timing)
        rows.append(row)
        if new is not None:
            replacements[name] = new
    return Report(rows, [achieved(pool, rows) for pool in allocation.pools]), replacements


def _batch_of(example_input: Any) -> int:
    first = example_input[0] if isinstance(example_input, tuple) else example_input
    return int(first.shape[0]) if first.dim() > 0 else 1


def _decide_layer(name: str, module: nn.Module, selection: Selection, filter_fn: Optional[FilterFn],
                  shape: Optional[tuple[int, ...]], allocated: Optional[Method], timing: Timing
                  ) -> tuple[LayerReport, Optional[nn.Module]]:
    params = sum(p.numel() for p in module.parameters())
    known = shape if shape is not None else (_nominal_shape(module) if isinstance(module, nn.Linear) else None)
    row = dict(name=name, layer=_layer_label(module), params_before=params,
               macs_before=layer_macs(module, known) if known else None)
    if filter_fn is not None and not filter_fn(module, name):
        return LayerReport(**row, skipped="excluded by filter_fn"), None
    methods = selection.methods_for(name)
    if methods is None:
        return LayerReport(**row, skipped="left dense by the config"), None
    not_applicable: list[str] = []
    try:
        for method in methods:
            if isinstance(method.rank, Budget) and allocated is not None:
                method = allocated  # same method, with the ranks the budget gave this layer
            handler = handler_for(method, module)
            decision = handler(method, module) if handler is not None else \
                NotApplicable(f"{type(method).__name__} does not handle {type(module).__name__}")
            if isinstance(decision, NotApplicable):
                not_applicable.append(decision.reason)
                continue
            if isinstance(decision, Skip):
                return LayerReport(**row, method=method.name, skipped=decision.reason), None
            return _cost_and_build(row, module, method.name, decision, shape, timing)
    except ValueError as e:
        raise ValueError(f"layer {name!r} ({_layer_label(module)}): {e}") from None
    reason = "; ".join(dict.fromkeys(not_applicable))
    if selection.is_explicit(name):  # the user named this layer: not handling it is an error
        raise ValueError(f"layer {name!r} ({_layer_label(module)}) is not supported: {reason}")
    return LayerReport(**row, skipped=reason), None


def _cost_and_build(row: dict, module: nn.Module, method: str, proposal: Proposal,
                    shape: Optional[tuple[int, ...]], timing: Timing) -> tuple[LayerReport, Optional[nn.Module]]:
    with torch.device("meta"):
        empty = proposal.empty(module)
    params_after = sum(p.numel() for p in empty.parameters())
    at = shape if shape is not None else _nominal_shape(module)
    before, after = layer_macs(module, at), layer_macs(empty, at)
    row.update(method=method, ranks=proposal.ranks, params_after=params_after)
    if row["macs_before"] is not None:
        row["macs_after"] = after
    if after >= before:
        where = "" if shape is not None else f" (at a nominal {at[-1]}x{at[-1]} input)"
        return LayerReport(**row, skipped=f"ranks {proposal.ranks} do not reduce MACs{where}: "
                                          f"{before:,} -> {after:,}"), None
    new = proposal.build(module)
    w = module.weight.detach().to(torch.float64).cpu()
    row["error"] = float((new.dense_weight().reshape(w.shape) - w).norm() / w.norm().clamp_min(1e-300))
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
