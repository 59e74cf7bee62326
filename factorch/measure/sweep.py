"""Rank sweeps of single layers: what each rank costs and what it buys (as in Cao 2022).

For every (layer, method, rank), a copy of the model gets only that layer decomposed (through
``fc.decompose_``, the one flow) and we record Cao's four panels:

* parameter reduction: dense / factorized parameters of the layer;
* speed-up: dense / factorized layer latency, measured side by side (``factorch.measure.latency``) at the
  layer's real input size; the theoretical MAC reduction is recorded next to it;
* approximation error ``||W - W_hat||_F / ||W||_F`` (Cao 2022, Eq. 14);
* accuracy with only that layer decomposed, and after ``finetune`` (the drop vs the dense model);
* with ``calibration``: the same layer decomposed data-aware (``fc.decompose_(..., calibration=)``,
  the same ranks): the factors it kept, the held-out output errors of both kinds of factors and
  its accuracy right after (the data-aware vs weight-only column).

An int rank follows the resolver's convention (``factorch.rank.resolve``): a ceiling per mode. A
point above a mode's full rank is swept at the capped ranks and its row says so in ``note``. Two
ints that cap to the same ranks (both at or above every mode's full rank) are both kept, one row
per requested point, each noting the cap (its ``ranks`` column shows what was built): the rows
stay one-to-one with the grid asked for, and at full ranks a factorized layer has at least the
dense layer's MACs, so such rows are "not decomposed" and cost no measurement.

Evaluation and fine-tuning are callables supplied by the caller (the CLI uses
``factorch.training``), so this module needs no data set.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from torch import nn

from factorch.api import decompose_
from factorch.calibration import as_calibration
from factorch.layers.conv_spec import CONVS
from factorch.measure.count import count
from factorch.methods import Method
from factorch.measure.latency import Profiler, compare
from factorch.progress import track
from factorch.registry import Context, decide, nominal_shape
from factorch.surgery import get_module

__all__ = ["SweepRow", "check_sweep", "sweep"]


@dataclass(frozen=True)
class SweepRow:
    """One (layer, method, rank) point. Ratios are dense / factorized (> 1 is better); latencies in
    milliseconds (median per call at ``batch``); accuracies in [0, 1]. ``note`` says why a point
    has no measurements (e.g. the ranks would not reduce the layer's MACs) and what the resolver
    noted about its ranks (an int rank capped at a mode's full rank)."""

    layer: str
    method: str
    rank: int
    ranks: str
    params_dense: int
    params_factorized: Optional[int]
    param_reduction: float
    macs_dense: int
    macs_factorized: Optional[int]
    mac_reduction: float
    latency_dense_ms: float
    latency_factorized_ms: float
    speedup: float
    batch: int
    error: float
    accuracy_dense: float
    accuracy: float
    accuracy_drop: float
    finetune_epochs: int
    accuracy_finetuned: float
    accuracy_drop_finetuned: float
    note: str = ""
    factors: str = ""                                   # with calibration: the factors kept, data-aware or weight-only
    output_error_weight_only: float = math.nan           # held-out model output errors (factorch.calibration.safety)
    output_error_data_aware: float = math.nan
    accuracy_data_aware: float = math.nan                # accuracy with the calibrated decomposition
    accuracy_drop_data_aware: float = math.nan


Evaluate = Callable[[nn.Module], float]
Finetune = Callable[[nn.Module], None]


Ranks = Union[Sequence[int], Mapping[str, Sequence[int]]]


def check_sweep(model: nn.Module, layers: Sequence[str], methods: Sequence[str], ranks: Ranks
                ) -> list[tuple[str, Method, int]]:
    """Validate the whole grid before any work; return its (layer, method config, rank) points.

    ``ranks``: one list for every method, or ``{method name: list}``. One ``ValueError`` names the
    first problem and the valid choices: an empty list, a layer that does not exist or is not a
    conv/linear, an unknown method or one that does not handle the layer, a rank below 1. A rank
    above a mode's full rank is no error: it is capped there, as the resolver does (module docstring).
    """
    valid_methods = ", ".join(sorted(Method.by_name))
    if not layers:
        raise ValueError("no layer to sweep; name layers like features.3,features.27")
    if not methods:
        raise ValueError(f"no method to sweep; choose from {valid_methods}")
    for name in methods:
        Method.from_name(name, 1)  # an unknown name: the error lists the known ones
    per_method = dict(ranks) if isinstance(ranks, Mapping) else {m: ranks for m in methods}
    extra = [m for m in per_method if m not in methods]
    if extra:
        raise ValueError(f"ranks are given for method {extra[0]!r}, which is not swept; methods: {', '.join(methods)}")
    for method_name in methods:
        listed = per_method.get(method_name)
        if not listed:
            raise ValueError(f"the rank list for {method_name} is empty; give ints >= 1 like 8,16,32")
        bad = [r for r in listed if isinstance(r, bool) or not isinstance(r, int) or r < 1]
        if bad:
            raise ValueError(f"ranks must be ints >= 1, got {bad[0]!r}")
    weighted = [n for n, m in model.named_modules() if isinstance(m, (*CONVS, nn.Linear))]
    points = []
    for name in layers:
        module = dict(model.named_modules()).get(name)
        if not isinstance(module, (*CONVS, nn.Linear)):
            shown = ", ".join(weighted[:16]) + (", ..." if len(weighted) > 16 else "")
            what = "has no layer" if module is None else f"has a {type(module).__name__}, not a conv/linear, at"
            raise ValueError(f"the model {what} {name!r}; conv/linear layers: {shown}")
        for method_name in methods:
            for rank in per_method[method_name]:
                method = Method.from_name(method_name, rank)
                points.append((name, method, rank))
                _check_point(name, module, method)
    return points


def _check_point(name: str, module: nn.Module, method: Method) -> None:
    """The decision path on this point: the method must apply (a capped int rank is only noted)."""
    decision = decide(name, module, [method], Context(nominal_shape(module), nominal=True))
    if decision.method is None:
        raise ValueError(f"{method.name} cannot decompose layer {name!r}: {decision.skipped}")


def sweep(model: nn.Module, layers: Sequence[str], methods: Sequence[str], ranks: Ranks, *,
          example_input, evaluate: Evaluate, finetune: Optional[Finetune] = None, finetune_epochs: int = 0,
          profiler: Profiler = Profiler(), calibration: Any = None) -> list[SweepRow]:
    """Decompose each layer alone at each rank with each method and measure it (see module doc).

    ``example_input``: one batch-1 input (gives every layer's input size); ``evaluate(model)``:
    test accuracy; ``finetune(model)``: trains a decomposed copy in place (``finetune_epochs`` is
    only recorded); ``profiler``: how layers are timed (its ``batch``, default 32);
    ``calibration``: batches or a ``fc.Calibration`` for the data-aware columns.
    """
    points = check_sweep(model, layers, methods, ranks)
    calibration = as_calibration(calibration)
    shapes = {r.name: r.input_shape for r in count(model, example_input).layers}
    batch = profiler.batch or 32
    base = evaluate(model)
    rows = []
    for name, method, rank in track(points, desc="sweep"):
        row = _point(model, name, method, rank, shapes[name], example_input, base, evaluate,
                     finetune, finetune_epochs, profiler, batch)
        if calibration is not None and row.params_factorized is not None:
            row = _data_aware(row, model, name, method, example_input, calibration, base, evaluate)
        rows.append(row)
    return rows


def _data_aware(row: SweepRow, model: nn.Module, name: str, method: Method, example_input, calibration,
                base: float, evaluate: Evaluate) -> SweepRow:
    """``row`` with the data-aware columns: the layer decomposed with ``calibration`` at the same ranks."""
    small = copy.deepcopy(model)
    report = decompose_(small, {name: method}, example_input=example_input, calibration=calibration)
    r = next(row for row in report.rows if row.name == name)
    acc = evaluate(small)
    nan = lambda v: math.nan if v is None else v  # noqa: E731
    return replace(row, factors=r.factors or "", output_error_weight_only=nan(r.output_error_weight_only),
                   output_error_data_aware=nan(r.output_error_data_aware), accuracy_data_aware=acc,
                   accuracy_drop_data_aware=base - acc)


def _point(model: nn.Module, name: str, method: Method, rank: int, shape: tuple[int, ...], example_input,
           base: float, evaluate: Evaluate, finetune: Optional[Finetune], epochs: int, profiler: Profiler,
           batch: int) -> SweepRow:
    small = copy.deepcopy(model)
    report = decompose_(small, {name: method}, example_input=example_input)  # only this layer
    r = next(row for row in report.rows if row.name == name)
    nan = math.nan
    common = dict(layer=name, method=method.name, rank=rank, ranks="x".join(map(str, r.ranks or ())),
                  params_dense=r.params_before, macs_dense=r.macs_before, batch=batch, accuracy_dense=base,
                  finetune_epochs=epochs if finetune else 0)
    if not r.decomposed:
        return SweepRow(**common, params_factorized=None, param_reduction=nan, macs_factorized=None,
                        mac_reduction=nan, latency_dense_ms=nan, latency_factorized_ms=nan, speedup=nan,
                        error=nan, accuracy=nan, accuracy_drop=nan, accuracy_finetuned=nan,
                        accuracy_drop_finetuned=nan,
                        note="; ".join(n for n in (f"not decomposed: {r.skipped}", r.note) if n))
    t = compare({"dense": get_module(model, name), "factorized": get_module(small, name)}, shape, profiler, batch)
    acc = evaluate(small)
    acc_ft = nan
    if finetune is not None:
        finetune(small)
        acc_ft = evaluate(small)
    return SweepRow(**common, params_factorized=r.params_after, param_reduction=r.params_before / r.params_after,
                    macs_factorized=r.macs_after, mac_reduction=r.macs_before / r.macs_after,
                    latency_dense_ms=t["dense"].forward * 1e3, latency_factorized_ms=t["factorized"].forward * 1e3,
                    speedup=t["dense"].forward / t["factorized"].forward, error=r.error, accuracy=acc,
                    accuracy_drop=base - acc, accuracy_finetuned=acc_ft, accuracy_drop_finetuned=base - acc_ft,
                    note=r.note or "")
