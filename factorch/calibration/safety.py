"""Which factors a decomposed layer keeps when calibration data is given: the safety rule and the
sequential correction.

Lower layer error is not higher accuracy, and at aggressive ranks a lower error of the model's
output (logits) is not fewer changed predictions either, so data-aware factors are checked on
what the user cares about, not trusted. ``select`` runs after every replacement is built
(``decompose_``/``plan``); it needs no labels.

**What a model is judged by** (on the held-out calibration batches, ``Calibration.split``; the
dense model is the reference):

* class logits (``Calibration(outputs="logits")``, or ``"auto"`` and a 2-D ``(batch, classes)``
  output with at least 2 classes): first the top-1 *agreement*, the share of held-out examples
  whose arg-max class is the dense model's (higher is better); where two models agree on as many
  examples, the mean ``KL(p_dense || p)`` of the softmax (Hinton et al. 2015, "Distilling the
  knowledge in a neural network", section 2: the dense model's soft targets carry what arg-max
  drops; lower is better). With ``outputs="logits"`` an output ``(batch, classes, ...)`` is
  judged per position (e.g. per pixel of a segmentation map);
* any other output (``outputs="values"``, or ``"auto"`` and an output of another shape: 1-D, one
  column, a feature map): the relative Frobenius error ``||y - y_dense|| / ||y_dense||`` over the
  held-out batches (lower is better). A regression head with several columns looks like logits:
  ``outputs="values"`` says what it is.

**The rule.** In the order the layers run, each decomposed layer whose class uses calibration has
two candidates at the same ranks, the data-aware factors and the weight-only ones; each is put in
place (the layers before it as already chosen, all later ones dense), the model is judged as
above, and the better candidate is kept; a tie (same agreement and same KL, or the same output
error) keeps the data-aware one. Last, the model with every choice is judged against the model
with weight-only factors everywhere, and the latter is kept everywhere if it is strictly better.
So on the held-out batches, ``calibration=`` never gives fewer predictions that agree with the
dense model's (nor, at equal agreement, a larger KL; for non-logit outputs: a larger output
error) than weight-only factors at the same ranks. The report gives, per layer, both candidates'
output error and, for logits, their agreement and KL.

``sequential=True`` (Zhang et al., TPAMI 2016, "Accelerating very deep convolutional networks for
classification and detection", section 3.3, "asymmetric" reconstruction): before its check, a
layer's data-aware factors are refitted to the inputs the layers before it (as chosen) produce:
the second moment of those inputs and their cross moment with the dense model's inputs, over the
fit batches (``factorch.decompositions.whitening``; the whitening itself is Wang et al. 2024,
SVD-LLM, section 3.1). Ranks stay those the decision path chose from the plain statistics.

Candidates are put in place by forward hooks (``factorch.measure.count.probe``): the model itself is
never changed here.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from factorch.calibration.batches import Calibration
from factorch.calibration.statistics import InputStats, Whitening, input_kind, model_place, run
from factorch.decompositions.blocks import squared_norm
from factorch.registry import Decision
from factorch.report import LayerReport

DATA_AWARE, WEIGHT_ONLY = "data-aware", "weight-only"


@dataclass(frozen=True)
class Score:
    """A model judged on the held-out batches against the dense model: ``output`` the relative
    error of its output; for class logits, ``agreement`` the share of positions (examples) whose
    top-1 class is the dense model's and ``kl`` the mean ``KL(p_dense || p)`` of the softmax (None
    otherwise); ``layer`` (if measured) the relative error of the checked layer's own output given
    the same input."""

    output: float
    agreement: Optional[float] = None
    kl: Optional[float] = None
    layer: Optional[float] = None

    def rank(self) -> tuple[float, ...]:
        """The rule's sort key, smaller is better: ``(-agreement, kl)`` for logits, ``(output,)``
        otherwise; NaN (a candidate whose output is not finite) sorts last."""
        key = (self.output,) if self.agreement is None else (-self.agreement, self.kl)
        return tuple(math.inf if math.isnan(v) else v for v in key)


def contrast(worse: Score, better: Score, worse_name: str, better_name: str) -> str:
    """Why ``better`` ranks first, in the rule's terms (for the report's notes)."""
    if worse.agreement is None or better.agreement is None:
        return f"held-out output error {worse.output:.4g} ({worse_name}) > {better.output:.4g} ({better_name})"
    if worse.agreement != better.agreement:
        return (f"held-out top-1 agreement with the dense model {worse.agreement:.4f} ({worse_name}) < "
                f"{better.agreement:.4f} ({better_name})")
    return (f"equal held-out top-1 agreement with the dense model ({better.agreement:.4f}), KL(p_dense || p) "
            f"{worse.kl:.4g} ({worse_name}) > {better.kl:.4g} ({better_name})")


def _positions(y: Tensor) -> Tensor:
    """``(batch, classes, ...)`` logits as ``(positions, classes)`` rows."""
    return y.movedim(1, -1).reshape(-1, y.shape[1])


@dataclass(frozen=True)
class Reference:
    """The dense model's outputs on the held-out batches (float64) and how a model is judged
    against them (see the module docstring): ``logits`` True: as class logits, with the dense
    model's log-softmax ``log_p`` and top-1 class ``top`` per batch, one row per position."""

    outputs: list[Tensor]
    logits: bool
    log_p: list[Tensor] = field(default_factory=list)
    top: list[Tensor] = field(default_factory=list)

    @classmethod
    def of(cls, outputs: list[Tensor], how: str) -> "Reference":
        """``how``: ``Calibration.outputs`` (``"auto"``: logits iff every output is ``(batch, classes)``
        with at least 2 classes)."""
        shaped = all(y.dim() >= 2 and y.shape[1] >= 2 for y in outputs)
        if how == "logits" and not shaped:
            raise ValueError(f"calibration outputs='logits' needs a (batch, classes, ...) output with at least 2 "
                             f"classes; the model's output has shape {tuple(outputs[0].shape)}")
        if how == "values" or not (shaped and (how == "logits" or all(y.dim() == 2 for y in outputs))):
            return cls(outputs, False)
        rows = [_positions(y) for y in outputs]
        return cls(outputs, True, [torch.log_softmax(r, dim=1) for r in rows], [r.argmax(1) for r in rows])

    def judge(self, outputs: Sequence[Tensor], layer: Optional[float] = None) -> Score:
        """The ``Score`` of a model whose held-out outputs are ``outputs`` (float64)."""
        err = norm = 0.0
        for y, ref in zip(outputs, self.outputs):
            err += float((y - ref).pow(2).sum())
            norm += float(ref.pow(2).sum())
        output = math.sqrt(err / norm) if norm > 0 else math.sqrt(err)
        if not self.logits:
            return Score(output, layer=layer)
        agree, kl, positions = 0, 0.0, 0
        for y, log_p, top in zip(outputs, self.log_p, self.top):
            rows = _positions(y)
            agree += int(((rows.argmax(1) == top) & torch.isfinite(rows).all(1)).sum())
            kl += float((log_p.exp() * (log_p - torch.log_softmax(rows, dim=1))).sum())
            positions += len(top)
        return Score(output, agree / positions, kl / positions, layer)


class _Captured(Exception):
    """Ends a forward pass once the wanted layer's input is read (not a RuntimeError: ``run``
    lets it through)."""


def reference_outputs(model: nn.Module, held: Sequence[Tensor], offset: int = 0, how: str = "auto") -> Reference:
    """The dense model's outputs on the held-out batches; ``offset``: the index of the first
    held-out batch among the user's (for messages); ``how``: ``Calibration.outputs``."""
    outs = []
    for i, x in enumerate(held):
        out = run(model, x, {}, lambda *a: None)
        if not isinstance(out, Tensor):
            raise ValueError(f"calibration compares the model's outputs, which must be a tensor; got a "
                             f"{type(out).__name__}")
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"calibration: the model's output on batch {offset + i} has NaN or Inf values")
        outs.append(out.double())
    return Reference.of(outs, how)


def score(model: nn.Module, held: Sequence[Tensor], reference: Reference, subs: dict[str, nn.Module],
          target: Optional[str] = None) -> Score:
    """Run ``model`` on ``held`` with each layer named in ``subs`` replaced by its module; judged
    against ``reference`` and, for ``target``, the relative error of its own output."""
    modules = {n: model.get_submodule(n) for n in subs}
    sums = [0.0, 0.0]

    def record(name: str, module: nn.Module, args: tuple, out: Any) -> Any:
        new = subs[name](*args)  # all of the call's inputs: an attention takes several
        if name == target:
            mine, theirs = _first(new), _first(out)  # an attention returns (output, weights)
            sums[0] += float((mine - theirs).double().pow(2).sum())
            sums[1] += float(theirs.double().pow(2).sum())
        return new

    with _eval(subs.values()):
        outputs = [run(model, x, modules, record).double() for x in held]
    layer = math.sqrt(sums[0] / sums[1]) if target is not None and sums[1] > 0 else None
    return reference.judge(outputs, layer)


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
    reference = reference_outputs(model, held, len(fit), calibration.outputs)
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
        pick = min(scores, key=lambda k: (scores[k].rank(), k != DATA_AWARE))
        chosen[name], weight_only[name], last = options[pick], options[WEIGHT_ONLY], scores[pick]
        found[name] = dict(factors=pick, scores=scores)
    if last is not None and any(f["factors"] == DATA_AWARE for f in found.values()):
        everywhere = score(model, held, reference, weight_only)
        if everywhere.rank() < last.rank():
            why = "weight-only factors everywhere: " + contrast(last, everywhere, "with the per-layer choices",
                                                                "weight-only everywhere")
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
        extra.append(f.get("whole") or "kept weight-only factors: " + contrast(aware, plain, "data-aware",
                                                                                "weight-only"))
    note = "; ".join(n for n in [row.note or ""] + extra if n) or None
    return replace(row, factors=f["factors"], error=weight_error(model.get_submodule(row.name), chosen[row.name]),
                   output_error_data_aware=aware.output if aware is not None else None,
                   output_error_weight_only=plain.output,
                   agreement_data_aware=aware.agreement if aware is not None else None,
                   agreement_weight_only=plain.agreement,
                   kl_data_aware=aware.kl if aware is not None else None, kl_weight_only=plain.kl,
                   layer_error=kept.layer, note=note)
