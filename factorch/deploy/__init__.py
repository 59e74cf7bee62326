"""``fc.deploy_``: a model (decomposed or not) made ready for inference, in place, its outputs unchanged.

Four steps, each exact up to float rounding (``docs/math.md``, "Deployment"):

1. **Fold batch norm** (``fold``, ``pairs``): every BatchNorm that directly follows a conv, a
   linear or a factorized layer (the dataflow from a ``torch.fx`` trace) becomes that layer's
   per-channel scale and bias, in the last factor of a factorized layer (Jacob et al. 2018); the
   BatchNorm is replaced by ``nn.Identity``.
2. **Merge factors** (``chains``): adjacent factors of a Tucker/CP/SVD chain with nothing between
   them become one conv where that costs fewer MACs at the deployment input size; a chain that
   merges whole is its dense layer.
3. **Choose the memory layout** (with a profiler): channels-last parameters where the whole
   model measures faster so.
4. **Keep the faster form** (with a profiler): each factorized layer as deployed, merged, with
   its inner channels padded to the runtime's channel block (``pad``, with ``pad_to``), or rebuilt
   dense, whichever runs fastest at the profiler's batch size, in the profiler's runtime (eager
   PyTorch or ONNX Runtime; ``decompose_``'s ``keep_if_faster``, at inference); then the whole
   model with those choices is timed next to the whole model at the fewest MACs and the whole
   model dense, and the fastest plan is kept: the deployed model is never measurably slower than
   its dense form.

Transactional: every replacement is built and the deployed model's output is checked against the
model's on ``example_input`` before anything is swapped (``surgery.swap``); a failure leaves the
model as it was. The model must be in eval mode. A deployed model is for inference and export
(``fc.export``): its structure is no longer the one a checkpoint rebuilds, so ``fc.save`` refuses it.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from factorch.deploy.chains import Merged, chain_macs, chain_of, merge
from factorch.deploy.choose import LAYOUTS, choose_layout, fastest, fastest_model, has_2d_convs, in_layout, \
    layout_profiler, model_latency, timing_batch
from factorch.deploy.fold import folded
from factorch.deploy.pad import padded
from factorch.deploy.pairs import Dataflow, find_pairs
from factorch.deploy.report import DeployReport, Fold, LayerForm
from factorch.layers.base import FactorizedLayer
from factorch.measure.count import count, layer_macs, probe
from factorch.measure.latency import Profiler
from factorch.surgery import swap, walk

__all__ = ["DeployReport", "Fold", "LayerForm", "deploy_"]


def deploy_(model: nn.Module, example_input: Tensor, *, profiler: Optional[Profiler] = None, merge_factors: bool = True,
            layout: str = "auto", pad_to: Optional[int] = None, rtol: float = 1e-4, atol: float = 1e-5) -> DeployReport:
    """Make ``model`` (in eval mode) ready for inference in place; returns what was done.

    ``example_input``: one input with its batch dimension (its shape gives each layer's input
    size; its values check the result). ``profiler``: how to time (``fc.Profiler(batch=1,
    threads=1)``: the deployment batch size, threads, device); without one nothing is timed:
    batch norms are folded and factors merged by MACs only, the layout is left as it is.
    ``merge_factors=False``: fold batch norms only. ``layout``: ``"auto"`` (measured with a
    profiler, else unchanged), ``"contiguous"`` or ``"channels_last"``. With
    ``fc.Profiler(runtime="onnxruntime")`` each layer's form is timed in ONNX Runtime, the runtime
    the model is exported to (which lays out activations itself: the layout stays contiguous).
    ``pad_to=B`` (with a profiler): one more form per chain, its inner channel counts padded with
    zero channels to multiples of ``B`` (``factorch.deploy.pad``: exact, more MACs; 16 suits
    ONNX Runtime on AVX-512 CPUs), kept where it measures fastest.

    The deployed model's output on ``example_input`` must match the model's within
    ``atol + rtol * max |y|``; otherwise one ``ValueError`` says by how much and nothing changes.
    Bad input (a model in training mode, an unknown layout) is one ``ValueError`` naming it.
    """
    _check(model, example_input, layout, rtol, atol, pad_to, profiler)
    shapes, dims, expected = _probe(model, example_input)
    flow = find_pairs(model, dims)
    report = DeployReport(dataflow=flow.method, kept=dict(flow.kept), macs_before=count(model, example_input).macs)
    replacements = _folds(model, flow, report)
    forms, runs = _forms(model, replacements, shapes, merge_factors, pad_to)
    dense_only = {p.producer: p.bn for p in flow.dense_only if p.producer in forms}
    batch = timing_batch(profiler, int(example_input.shape[0]))
    input_shape = tuple(example_input.shape[1:])
    choice = _fewest_macs(forms)  # without timing
    chosen_layout = "contiguous" if layout == "auto" else layout
    if layout == "auto" and profiler is not None and profiler.runtime == "eager" and has_2d_convs(model):
        candidate = _assemble(model, replacements, _chosen(model, forms, choice, dense_only))
        chosen_layout, report.layout_latency = choose_layout(candidate, input_shape, profiler, batch)
    report.layout = chosen_layout
    latencies: dict[str, dict[str, float]] = {}
    if profiler is not None:
        timed = layout_profiler(profiler, chosen_layout)
        for name, variants in forms.items():
            if len(variants) > 1:
                choice[name], latencies[name] = fastest(variants, shapes[name], timed, batch)
        choice = _whole_model_plan(model, replacements, forms, dense_only, choice, chosen_layout, input_shape,
                                   profiler, batch, report)
    chosen = _chosen(model, forms, choice, dense_only)
    for name, bn in dense_only.items():
        if choice[name] == "dense":  # a BN kept after a tensor train folds into its dense rebuild
            report.kept.pop(bn, None)
            report.folded.append(Fold(bn, name, "dense"))
    _layer_rows(model, replacements, forms, runs, choice, shapes, latencies, report)
    candidate = in_layout(_assemble(model, replacements, chosen), chosen_layout)
    report.max_abs_diff = _verify(candidate, example_input, expected, rtol, atol)
    report.macs_after = count(candidate, example_input).macs
    if profiler is not None:
        report.batch, report.runtime = batch, profiler.runtime
        report.latency_before, report.latency_after = model_latency(model, candidate, input_shape, profiler, batch)
    swap(model, {**replacements, **chosen})  # the modules the candidate holds: built and checked
    in_layout(model, chosen_layout)
    model.factorch_deployed = True
    return report


def _check(model: nn.Module, example_input: Tensor, layout: str, rtol: float, atol: float, pad_to: Optional[int],
           profiler: Optional[Profiler]) -> None:
    if pad_to is not None:
        if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 2:
            raise ValueError(f"deploy_ pad_to must be an int >= 2 (the runtime's channel block, e.g. 16), "
                             f"got {pad_to!r}")
        if profiler is None:
            raise ValueError("deploy_ pad_to adds a form with more MACs that only a measurement can choose: "
                             "give a profiler too")
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"layout must be one of auto, {', '.join(LAYOUTS)}; got {layout!r}")
    if not isinstance(example_input, Tensor) or example_input.dim() < 1 or not example_input.is_floating_point():
        raise ValueError("example_input must be one floating-point tensor with a batch dimension, e.g. (1, 3, 224, 224)")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"deploy_ tolerance {name} must be a number >= 0, got {value!r}")
    training = next((f"layer {name!r}" if name else "the model" for name, m in model.named_modules() if m.training),
                    None)
    if training is not None:
        raise ValueError(f"deploy_ prepares a model for inference and folds batch norm with its running statistics: "
                         f"call model.eval() first ({training} is in training mode)")
    meta = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if meta is not None:
        raise ValueError(f"the model's weights are on the meta device (e.g. {meta!r}): nothing to deploy")


def _probe(model: nn.Module, x: Tensor) -> tuple[dict[str, tuple[int, ...]], dict[str, int], Tensor]:
    """Each module's input shape (no batch) and output dimensions, and the model's output on ``x``."""
    shapes: dict[str, tuple[int, ...]] = {}
    dims: dict[str, int] = {}

    def record(name: str, module: nn.Module, args: tuple, out: object) -> None:
        if args and isinstance(args[0], Tensor):
            shapes.setdefault(name, tuple(args[0].shape[1:]))
        if isinstance(out, Tensor):
            dims.setdefault(name, out.dim())

    modules = {n: m for n, m in model.named_modules() if n}
    out = probe(model, x, modules, record)
    if not isinstance(out, Tensor):
        raise ValueError(f"deploy_ checks models with one tensor output; {type(model).__name__} returned "
                         f"{type(out).__name__}")
    return shapes, dims, out.detach().clone()


def _folds(model: nn.Module, flow: Dataflow, report: DeployReport) -> dict[str, nn.Module]:
    """The folded producers and the Identity standing for each folded BatchNorm."""
    out: dict[str, nn.Module] = {}
    for pair in flow.pairs:
        producer, bn = model.get_submodule(pair.producer), model.get_submodule(pair.bn)
        try:
            out[pair.producer] = folded(producer, bn)
        except ValueError as e:
            raise ValueError(f"batch norm {pair.bn!r} after {pair.producer!r}: {e}") from None
        out[pair.bn] = nn.Identity()
        report.folded.append(Fold(pair.bn, pair.producer, "last" if isinstance(producer, FactorizedLayer) else ""))
    return out


def _forms(model: nn.Module, replacements: dict[str, nn.Module], shapes: dict[str, tuple[int, ...]],
           merge_factors: bool, pad_to: Optional[int]) -> tuple[dict[str, dict[str, nn.Module]], dict[str, str]]:
    """Per factorized layer that ran, its candidate forms -- ``factorized`` (as it is, folded),
    ``merged`` (its factors as plain convs, merged by the fewest-MACs rule: where that is another
    chain than the layer's own, or a Tucker-3 core is built once), ``padded`` (with ``pad_to``: its
    factors as plain convs, inner channels padded to the block) and ``dense`` (``to_dense``); a
    chain that merges whole has the dense form alone -- and the merged form's runs."""
    forms: dict[str, dict[str, nn.Module]] = {}
    runs: dict[str, str] = {}
    for name, layer in walk(model):
        if not isinstance(layer, FactorizedLayer) or name not in shapes:
            continue
        current = replacements[name] if name in replacements else copy.deepcopy(layer)
        try:
            dense = current.to_dense().eval()
        except (NotImplementedError, RuntimeError, ValueError) as e:
            raise ValueError(f"layer {name!r} ({type(layer).__name__}) cannot be rebuilt dense: {e}") from None
        merged = merge(current, shapes[name]) if merge_factors else None
        if merged is not None and len(merged.modules) == 1:  # the fewest MACs is one conv: the dense layer
            forms[name] = {"dense": dense}
            continue
        forms[name] = {"factorized": current}
        if merged is not None and (_merged_any(merged) or _baked_any(current)):
            forms[name]["merged"], runs[name] = merged.module(), merged.label
        chain = chain_of(current) if pad_to else None
        wide = padded([m for _, m in chain], pad_to) if chain else None
        if wide is not None:
            forms[name]["padded"] = wide
        forms[name]["dense"] = dense
    return forms, runs


def _fewest_macs(forms: dict[str, dict[str, nn.Module]]) -> dict[str, str]:
    """Per layer, the form with the fewest MACs: the merge when there is one (it never costs more
    than the chain; a padded chain always costs more)."""
    return {name: next(f for f in ("merged", "factorized", "dense") if f in v) for name, v in forms.items()}


def _whole_model_plan(model: nn.Module, replacements: dict[str, nn.Module], forms: dict[str, dict[str, nn.Module]],
                      dense_only: dict[str, str], choice: dict[str, str], layout: str, input_shape: tuple[int, ...],
                      profiler: Profiler, batch: int, report: DeployReport) -> dict[str, str]:
    """The per-layer choices checked on the whole model: layers timed alone miss what they cost
    together (caches, a runtime's layout changes between kernels, thread start-up per kernel), so
    the model with every layer at its fastest form alone, with every layer at its fewest MACs and
    with every layer dense are timed side by side and the fastest plan is kept (the dense plan
    makes the deployed model never measurably slower than the dense one)."""
    plans = {"per layer": dict(choice), "fewest MACs": _fewest_macs(forms), "dense": {n: "dense" for n in forms}}
    unique: dict[str, dict[str, str]] = {}
    for label, plan in plans.items():
        if plan not in unique.values():
            unique[label] = plan
    if len(unique) < 2:
        return choice
    models = {label: in_layout(_assemble(model, replacements, _chosen(model, forms, plan, dense_only)), layout)
              for label, plan in unique.items()}
    report.plan, report.plan_latency = fastest_model(models, input_shape, profiler, batch)
    return unique[report.plan]


def _merged_any(merged: Merged) -> bool:
    return any(len(run) > 1 for run in merged.runs)


def _baked_any(layer: nn.Module) -> bool:
    """Whether the chain holds a factor built at each call (a Tucker-3 core), built once as a plain conv."""
    return any(m is not getattr(layer, n) for n, m in chain_of(layer) or [])


def _chosen(model: nn.Module, forms: dict[str, dict[str, nn.Module]], choice: dict[str, str],
            dense_only: dict[str, str]) -> dict[str, nn.Module]:
    """The chosen form of every factorized layer; where a BatchNorm after a tensor train could not
    be folded into it and the layer is rebuilt dense, the BatchNorm folds into the dense layer."""
    out = {}
    for name, form in choice.items():
        out[name] = forms[name][form]
        if form == "dense" and name in dense_only:
            out[name] = folded(out[name], model.get_submodule(dense_only[name]))
            out[dense_only[name]] = nn.Identity()
    return out


def _assemble(model: nn.Module, replacements: dict[str, nn.Module], chosen: dict[str, nn.Module]) -> nn.Module:
    """A copy of ``model`` with the folds and the chosen forms swapped in (those modules
    themselves, not copies: they are what ``deploy_`` finally swaps into the model)."""
    candidate = copy.deepcopy(model)
    swap(candidate, {**replacements, **chosen})
    return candidate


def _layer_rows(model: nn.Module, replacements: dict[str, nn.Module], forms: dict[str, dict[str, nn.Module]],
                runs: dict[str, str], choice: dict[str, str], shapes: dict[str, tuple[int, ...]], latencies: dict[str, dict[str, float]],
                report: DeployReport) -> None:
    for name, variants in forms.items():
        layer = model.get_submodule(name)
        current = forms[name].get("factorized", replacements.get(name, layer))
        chain = chain_of(current)
        factorized = chain_macs(chain, shapes[name]) if chain is not None else layer_macs(current, shapes[name])
        dense = layer_macs(variants["dense"], shapes[name])
        form = choice[name]
        after = {"factorized": factorized, "dense": dense}.get(form)
        if after is None:
            after = layer_macs(variants[form], shapes[name])
        factors = runs.get(name, "") if form == "merged" else \
            ("" if form == "dense" else " | ".join(n for n, _ in chain) if chain else "")
        if form == "padded":
            factors += f", inner channels padded to multiples of {variants[form].block}"
        note = ""
        if report.plan not in (None, "per layer") and latencies.get(name) and \
                form != min(latencies[name], key=latencies[name].get):
            note = f"{report.plan} plan: the whole model measured fastest so"
        elif name in latencies and form != "factorized":
            note = f"{latencies[name]['factorized'] / latencies[name][form]:.2f}x faster than factorized"
        elif form == "dense" and name not in latencies:
            note = "dense costs the fewest MACs"
        report.layers.append(LayerForm(name, type(layer).__name__, form, factors, factorized, dense, after,
                                       latencies.get(name), note))


def _verify(candidate: nn.Module, x: Tensor, expected: Tensor, rtol: float, atol: float) -> float:
    with torch.no_grad():
        got = candidate(x)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    diff = float((got - expected).abs().max()) if expected.numel() else 0.0
    if got.shape != expected.shape or not diff <= atol + rtol * scale:
        raise ValueError(f"the deployed model's output differs from the model's: max abs diff {diff:.3g} (outputs up "
                         f"to {scale:.3g}; tolerance {atol:g} + {rtol:g} x that); the model was not changed")
    return diff
