"""Which factors a decomposed layer keeps when calibration data is given: the safety rule and the
sequential correction.

Lower layer error is not higher accuracy, so data-aware factors are checked, not trusted.
``select`` runs after every replacement is built (``decompose_``/``plan``). In the order the
layers run, each decomposed layer whose class uses calibration has two candidates at the same
ranks, the data-aware factors and the weight-only ones; each is put in place (the layers before
it as already chosen, all others dense), the model runs on the held-out calibration batches, and
the candidate whose final output is closer to the dense model's (relative Frobenius error over
the held-out batches) is kept; a tie keeps the data-aware one. Last, the model with every choice
is compared with the model with weight-only factors everywhere, and the latter wins if it is
closer. So on the held-out batches, ``calibration=`` never gives a model output further from the
dense model's than weight-only factors at the same ranks.

``sequential=True`` (Zhang et al., TPAMI 2016, "asymmetric" reconstruction): before its check,
a layer's data-aware factors are refitted to the inputs the layers before it (as chosen)
produce: the second moment of those inputs and their cross moment with the dense model's
inputs, over the fit batches (``factorch.decompositions.whitening``). Ranks stay those the
decision path chose from the plain statistics.

Candidates are put in place by forward hooks (``factorch.measure.count.probe``): the model itself is
never changed here.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from factorch.calibration.batches import Calibration
from factorch.calibration.statistics import InputStats, Whitening, input_kind, model_place, run
from factorch.decompositions.svd import squared_norm
from factorch.registry import Decision
from factorch.report import LayerReport

DATA_AWARE, WEIGHT_ONLY = "data-aware", "weight-only"


@dataclass(frozen=True)
class Score:
    """Relative errors on the held-out batches: of the model's output and (if measured) of the
    checked layer's own output given the same input."""

    output: float
    layer: Optional[float] = None


class _Captured(Exception):
    """Ends a forward pass once the wanted layer's input is read (not a RuntimeError: ``run``
    lets it through)."""


def reference_outputs(model: nn.Module, held: Sequence[Tensor], offset: int = 0) -> list[Tensor]:
    """The dense model's outputs on the held-out batches (float64); ``offset``: the index of the
    first held-out batch among the user's (for messages)."""
    outs = []
    for i, x in enumerate(held):
        out = run(model, x, {}, lambda *a: None)
        if not isinstance(out, Tensor):
            raise ValueError(f"calibration compares the model's outputs, which must be a tensor; got a "
                             f"{type(out).__name__}")
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"calibration: the model's output on batch {offset + i} has NaN or Inf values")
        outs.append(out.double())
    return outs


def score(model: nn.Module, held: Sequence[Tensor], reference: Sequence[Tensor], subs: dict[str, nn.Module],
          target: Optional[str] = None) -> Score:
    """Run ``model`` on ``held`` with each layer named in ``subs`` replaced by its module; the
    relative error of the output against ``reference`` and, for ``target``, of its own output."""
    modules = {n: model.get_submodule(n) for n in subs}
    sums = [0.0, 0.0]

    def record(name: str, module: nn.Module, args: tuple, out: Any) -> Any:
        new = subs[name](*args)  # all of the call's inputs: an attention takes several
        if name == target:
            mine, theirs = _first(new), _first(out)  # an attention returns (output, weights)
            sums[0] += float((mine - theirs).double().pow(2).sum())
            sums[1] += float(theirs.double().pow(2).sum())
        return new

    err = norm = 0.0
    with _eval(subs.values()):
        for x, ref in zip(held, reference):
            out = run(model, x, modules, record).double()
            err += float((out - ref).pow(2).sum())
            norm += float(ref.pow(2).sum())
    layer = math.sqrt(sums[0] / sums[1]) if target is not None and sums[1] > 0 else None
    return Score(math.sqrt(err / norm) if norm > 0 else math.sqrt(err), layer)


def _first(out: Any) -> Tensor:
    """A layer's output tensor: ``out``, or the first of a tuple."""
    return out[0] if isinstance(out, tuple) else out


@contextlib.contextmanager
def _eval(modules: Iterable[nn.Module]) -> Iterator[None]:
    """The candidate modules (not in the model, so ``probe`` does not see them) in eval mode for a
    pass; their modes restored after."""
    modes = {m: m.training for mod in modules for m in mod.modules()}
    try:
        for m in modes:
            m.training = False
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def refit(model: nn.Module, fit: Sequence[Tensor], name: str, chosen: dict[str, nn.Module],
          damping: float) -> Whitening:
    """The sequential whitening of layer ``name``: statistics of its inputs with the ``chosen``
    layers in place, and their cross moment with its inputs in the dense model."""
    module = model.get_submodule(name)
    kind = input_kind(module)
    stats = InputStats.empty(module, model_place(model)[0])
    modules = {n: model.get_submodule(n) for n in chosen}
    rows: dict[str, Tensor] = {}

    def capture(key: str):
        def record(n: str, m: nn.Module, args: tuple, out: Any) -> Optional[Tensor]:
            if n == name:
                rows[key] = kind.rows(m, args[0]).to(torch.float64)
                raise _Captured
            return chosen[n](*args)
        return record

    with _eval(chosen.values()):
        for x in fit:
            for key, subs in (("dense", {name: module}), ("new", {**modules, name: module})):
                try:
                    run(model, x, subs, capture(key))
                except _Captured:
                    pass
            stats.add(rows["new"], rows["dense"])
    return Whitening.of(stats, damping)


def weight_error(module: nn.Module, new: nn.Module) -> float:
    """``||W - W_hat|| / ||W||`` of a built replacement (``W``: the kernel as its class lays it out,
    ``dense_kernel``: an attention's four projection weights together), in float64 on the weight's
    device. The rebuilt kernel is the one large temporary: the weight is compared with it block by
    block, not copied to float64 (a 16384^2 Linear: 2 GB instead of 6 GB)."""
    w = type(new).dense_kernel(module)  # the weight itself for most layers, in its own dtype
    rows, built = w.reshape(w.shape[0], -1), new.dense_weight().reshape(w.shape[0], -1)
    step = -(-rows.shape[0] // 8)  # an eighth of the rows at a time
    err2 = sum(float(torch.linalg.vector_norm(built[i:i + step] - rows[i:i + step])) ** 2
               for i in range(0, rows.shape[0], step))
    return err2 ** 0.5 / max(squared_norm(w) ** 0.5, 1e-300)


def select(model: nn.Module, rows: list[LayerReport], replacements: dict[str, nn.Module],
           decisions: dict[str, Optional[Decision]], calibration: Calibration, order: Sequence[str],
           notes: dict[str, str]) -> tuple[list[LayerReport], dict[str, nn.Module]]:
    """The safety rule and (if asked) the sequential correction over the built ``replacements``
    (see the module docstring); returns the updated report rows and replacements. ``order``: the
    layers in the order they run; ``notes``: per layer, what the calibration statistics say."""
    fit, held = calibration.split()
    reference = reference_outputs(model, held, len(fit))
    names = [n for n in order if n in replacements] + [n for n in replacements if n not in order]
    chosen: dict[str, nn.Module] = {}
    weight_only: dict[str, nn.Module] = {}
    found: dict[str, dict[str, Any]] = {}
    last: Optional[Score] = None
    for name in names:
        module, proposal = model.get_submodule(name), decisions[name].proposal
        if proposal.whitening is None:
            options = {WEIGHT_ONLY: replacements[name]}
        else:
            aware = replacements[name]
            if calibration.sequential and chosen:
                aware = proposal.with_whitening(refit(model, fit, name, chosen, calibration.damping)).build(module)
            options = {DATA_AWARE: aware, WEIGHT_ONLY: proposal.with_whitening(None).build(module)}
        scores = {k: score(model, held, reference, {**chosen, name: new}, name) for k, new in options.items()}
        pick = min(scores, key=lambda k: (scores[k].output, k != DATA_AWARE))
        chosen[name], weight_only[name], last = options[pick], options[WEIGHT_ONLY], scores[pick]
        found[name] = dict(factors=pick, scores=scores)
    if last is not None and any(f["factors"] == DATA_AWARE for f in found.values()):
        everywhere = score(model, held, reference, weight_only)
        if everywhere.output < last.output:
            why = (f"weight-only factors everywhere: model output error {everywhere.output:.4g} < "
                   f"{last.output:.4g} with the per-layer choices")
            for name, f in found.items():
                if f["factors"] == DATA_AWARE:
                    f.update(factors=WEIGHT_ONLY, whole=why)
            chosen = dict(weight_only)
    out_rows = [_row(r, model, chosen, found, notes) for r in rows]
    return out_rows, {**replacements, **chosen}


def _row(row: LayerReport, model: nn.Module, chosen: dict[str, nn.Module], found: dict[str, dict[str, Any]],
         notes: dict[str, str]) -> LayerReport:
    """``row`` with the calibration fields of the factors kept."""
    f = found.get(row.name)
    if f is None:
        return row
    scores = f["scores"]
    aware, plain = scores.get(DATA_AWARE), scores[WEIGHT_ONLY]
    kept = scores[DATA_AWARE if f["factors"] == DATA_AWARE else WEIGHT_ONLY]
    extra = [notes.get(row.name, "")]
    if aware is not None and f["factors"] == WEIGHT_ONLY:
        extra.append(f["whole"] if "whole" in f else
                     f"kept weight-only factors: data-aware output error {aware.output:.4g} > {plain.output:.4g}")
    note = "; ".join(n for n in [row.note or ""] + extra if n) or None
    return replace(row, factors=f["factors"], error=weight_error(model.get_submodule(row.name), chosen[row.name]),
                   output_error_data_aware=aware.output if aware is not None else None,
                   output_error_weight_only=plain.output, layer_error=kept.layer, note=note)
