"""The per-layer result of ``decompose_``/``plan``: printing it prints a table."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from factorch.rank import Pool


@dataclass(frozen=True)
class LayerReport:
    """One candidate layer. ``skipped`` is the reason it stayed dense (None if decomposed).

    ``macs_*`` are per example at the layer's real input size, None where that size is unknown
    (no ``example_input`` was given for a conv); ``error`` is ``||W - W_hat|| / ||W||``.
    ``latency_*`` (seconds, median per call) are set when ``keep_if_faster`` timed the layer: the
    dense and the factorized form at the same batch, input size, dtype and device. ``note``: what
    to know about a decomposed layer's ranks (capped at full rank, a fraction below rank 1, the
    methods of a list passed over and why).

    With calibration data (``factorch.calibration.safety``): ``factors`` is ``"data-aware"`` or
    ``"weight-only"`` (the factors kept). The ``*_data_aware`` / ``*_weight_only`` fields judge the
    *model* on the held-out calibration batches with this layer's data-aware / weight-only factors
    in place (the layers before it as kept, the rest dense; None where there were no data-aware
    factors to try), against the dense model: ``output_error_*`` the relative error of its output;
    for class-logit outputs ``agreement_*`` the share of examples whose top-1 class is the dense
    model's and ``kl_*`` the mean ``KL(p_dense || p)`` of the softmax (None for other outputs),
    which is what the rule compares. ``layer_error`` is the relative error of this layer's own
    output there, with the kept factors. ``rank_spectra`` says which
    spectra a rank rule or budget read: ``"whitened"`` (the output energy on the calibration
    inputs) or ``"weights"``; None for int, tuple and fraction ranks.
    """

    name: str
    layer: str
    method: Optional[str] = None
    ranks: Optional[tuple[int, ...]] = None
    params_before: int = 0
    params_after: Optional[int] = None
    macs_before: Optional[int] = None
    macs_after: Optional[int] = None
    error: Optional[float] = None
    skipped: Optional[str] = None
    latency_dense: Optional[float] = None
    latency_factorized: Optional[float] = None
    note: Optional[str] = None
    factors: Optional[str] = None
    rank_spectra: Optional[str] = None
    output_error_data_aware: Optional[float] = None
    output_error_weight_only: Optional[float] = None
    agreement_data_aware: Optional[float] = None
    agreement_weight_only: Optional[float] = None
    kl_data_aware: Optional[float] = None
    kl_weight_only: Optional[float] = None
    layer_error: Optional[float] = None

    @property
    def decomposed(self) -> bool:
        return self.skipped is None

    @property
    def kept(self) -> str:
        """``"factorized"`` or ``"dense"``: the form the layer has after ``decompose_``."""
        return "factorized" if self.decomposed else "dense"

    @property
    def output_error(self) -> Optional[float]:
        """The held-out model output error with the kept factors (None without calibration)."""
        return self.output_error_data_aware if self.factors == "data-aware" else self.output_error_weight_only

    @property
    def agreement(self) -> Optional[float]:
        """The held-out top-1 agreement with the dense model with the kept factors (None without
        calibration or for outputs that are not class logits)."""
        return self.agreement_data_aware if self.factors == "data-aware" else self.agreement_weight_only

    @property
    def kl(self) -> Optional[float]:
        """The held-out ``KL(p_dense || p)`` with the kept factors (None as for ``agreement``)."""
        return self.kl_data_aware if self.factors == "data-aware" else self.kl_weight_only

    @property
    def speedup(self) -> Optional[float]:
        """Measured dense / factorized latency (> 1: the factorized form is faster), if timed."""
        if self.latency_dense is None or not self.latency_factorized:
            return None
        return self.latency_dense / self.latency_factorized


@dataclass(frozen=True)
class BudgetResult:
    """What one ``fc.Budget`` achieved over the ``layers`` it governs (skipped layers count as dense)."""

    budget: str
    kind: str
    target: float
    layers: int
    before: float  # MACs or parameters (ints); seconds per call for a latency budget
    after: float
    left_dense: int = 0
    note: str = ""  # how a latency budget was measured

    @classmethod
    def of(cls, pool: Pool, rows: Sequence[LayerReport]) -> "BudgetResult":
        """The pool's achieved fraction from the final report rows (a layer left dense counts as dense)."""
        kind, names = pool.budget.kind, set(pool.names)
        mine = [r for r in rows if r.name in names]
        before = sum(getattr(r, f"{kind}_before") for r in mine)
        after = sum(getattr(r, f"{kind}_after" if r.decomposed else f"{kind}_before") for r in mine)
        return cls(str(pool.budget), kind, pool.budget.fraction, len(mine), before, after,
                   sum(not r.decomposed for r in mine))

    @property
    def fraction(self) -> float:
        return self.after / self.before if self.before else 1.0

    def __str__(self) -> str:
        dense = f"; {self.left_dense} of them left dense, counted dense" if self.left_dense else ""
        if self.kind == "latency":  # the whole model, measured
            return (f"{self.budget}: the model runs in {self.fraction:.4f} of the dense model's time, measured "
                    f"({self.before * 1e3:.4g} -> {self.after * 1e3:.4g} ms; target {self.target:g}; "
                    f"{self.layers} layers governed{dense}; {self.note})")
        short = ("; less than the target: no layer's rank can grow without its factorized form costing more MACs "
                 "than its dense one") if self.fraction < 0.99 * self.target else ""
        return (f"{self.budget}: the {self.layers} layers it governs keep {self.fraction:.4f} of their "
                f"{self.kind} ({_num(self.before)} -> {_num(self.after)}; target {self.target:g}{dense}{short})")


def _num(v: Optional[int]) -> str:
    if v is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return str(v)


def _ratio(before: Optional[int], after: Optional[int]) -> str:
    return f"{before / after:.2f}x" if before and after else "-"


@dataclass
class Report:
    """Rows for every candidate layer, in model order."""

    rows: list[LayerReport] = field(default_factory=list)
    budgets: list[BudgetResult] = field(default_factory=list)
    calibration: Optional[str] = None  # what the calibration data was and how it was used

    @property
    def decomposed(self) -> list[LayerReport]:
        return [r for r in self.rows if r.decomposed]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.rows if not r.decomposed]

    def totals(self) -> dict[str, Optional[int]]:
        """Params/MACs of all candidate layers before and after (skipped layers count as dense)."""
        def total(key_after: str, key_before: str) -> Optional[int]:
            vals = [getattr(r, key_after) if r.decomposed else getattr(r, key_before) for r in self.rows]
            return None if any(v is None for v in vals) else sum(vals)
        before_macs = [r.macs_before for r in self.rows]
        return {
            "params_before": sum(r.params_before for r in self.rows),
            "params_after": total("params_after", "params_before"),
            "macs_before": None if any(v is None for v in before_macs) else sum(before_macs),
            "macs_after": total("macs_after", "macs_before"),
        }

    def as_dicts(self) -> list[dict[str, Any]]:
        """Plain rows (for CSV/JSON)."""
        return [asdict(r) for r in self.rows]

    def __str__(self) -> str:
        timed = any(r.speedup is not None for r in self.rows)
        calibrated = any(r.factors is not None for r in self.rows)
        logits = any(r.agreement_weight_only is not None for r in self.rows)
        head = ["layer", "type", "method", "ranks", "params", "MACs", "rel.err"] + \
            (["latency dense -> factorized"] if timed else []) + \
            (["factors", "out.err data-aware/weight-only"] if calibrated else []) + \
            (["agree data-aware/weight-only", "KL data-aware/weight-only"] if logits else []) + ["note"]
        body = []
        for r in self.rows:
            ranks = "x".join(map(str, r.ranks)) if r.ranks else "-"
            if r.decomposed:
                params = f"{_num(r.params_before)} -> {_num(r.params_after)}"
                macs = f"{_num(r.macs_before)} -> {_num(r.macs_after)}"
                # error None: a fresh layer (from scratch) approximates nothing
                note = f"{_ratio(r.macs_before, r.macs_after)} fewer MACs"
                err = f"{r.error:.4f}" if r.error is not None else "fresh"
                if r.speedup is not None:
                    note += f", kept factorized: {r.speedup:.2f}x faster"
                if r.note:
                    note += f"; {r.note}"
            else:
                params, macs, err, note = _num(r.params_before), _num(r.macs_before), "-", f"skipped: {r.skipped}"
            latency = [f"{_ms(r.latency_dense)} -> {_ms(r.latency_factorized)}" if r.speedup else "-"] if timed else []
            calib = [r.factors or "-", f"{_err(r.output_error_data_aware)}/{_err(r.output_error_weight_only)}"
                     if r.factors else "-"] if calibrated else []
            judged = [_pair(r.agreement_data_aware, r.agreement_weight_only),
                      _pair(r.kl_data_aware, r.kl_weight_only, ".3g")] if logits else []
            body.append([r.name, r.layer, r.method or "-", ranks, params, macs, err] + latency + calib + judged +
                        [note])
        t = self.totals()
        body.append(["total", "", "", "", f"{_num(t['params_before'])} -> {_num(t['params_after'])}",
                     f"{_num(t['macs_before'])} -> {_num(t['macs_after'])}", ""] + ([""] if timed else []) +
                    (["", ""] if calibrated else []) + (["", ""] if logits else []) +
                    [f"{len(self.decomposed)} decomposed, {len(self.skipped)} skipped"])
        widths = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]
        fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
        sep = "  ".join("-" * w for w in widths)
        lines = [fmt(head), sep] + [fmt(row) for row in body[:-1]] + [sep, fmt(body[-1])]
        tail = [str(b) for b in self.budgets] + ([self.calibration] if self.calibration else [])
        read = {kind: sum(r.rank_spectra == kind for r in self.decomposed) for kind in ("whitened", "weights")}
        parts = [f"{n} layer(s) the {what}" for kind, what in (
            ("whitened", "whitened spectra (output energy on the calibration inputs)"),
            ("weights", "spectra of the weights")) if (n := read[kind])]
        if parts:
            tail.append("rank rules read for " + " and for ".join(parts))
        if calibrated:
            tail.append("out.err: relative error of the model's output on the held-out calibration batches with "
                        "that layer's factors in place (the layers before it as kept)")
            tail.append("factors kept by " + (
                "the top-1 agreement (agree) of the model's predictions with the dense model's there, ties by "
                "KL(p_dense || p) of the softmax (KL)" if logits else
                "out.err (the model's output is not class logits)"))
        return "\n".join(lines + tail)


def _err(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.4f}"


def _pair(data_aware: Optional[float], weight_only: Optional[float], spec: str = ".4f") -> str:
    """``data-aware/weight-only`` ("-" for a missing one; "-" alone where neither was measured)."""
    show = lambda v: "-" if v is None else format(v, spec)  # noqa: E731
    return "-" if weight_only is None else f"{show(data_aware)}/{show(weight_only)}"


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3g} ms"
