"""What ``fc.deploy_`` did: the BatchNorms folded (and those kept, with the reason), each
factorized layer's deployed form, the memory layout, and the measured latencies; printing it prints
a table."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Fold:
    """BatchNorm ``bn`` folded into ``into`` (a dotted module name); ``factor``: where in it (``""``
    for a plain conv or linear, ``"last"`` for a factorized layer's last factor, ``"dense"`` for a
    factorized layer rebuilt dense first)."""

    bn: str
    into: str
    factor: str = ""


@dataclass(frozen=True)
class LayerForm:
    """One factorized layer as deployed: ``form`` is ``"factorized"`` (its factor chain, the
    BatchNorm folded into it), ``"merged"`` (``runs`` says which adjacent factors became one conv,
    e.g. ``first+core | last``), ``"padded"`` (its factors with the inner channels padded to the
    runtime's channel block) or ``"dense"`` (rebuilt as one layer). MACs per example at the
    layer's input size; ``latency``: seconds per call of each form timed (None: not measured)."""

    name: str
    layer: str
    form: str
    runs: str
    macs_factorized: int
    macs_dense: int
    macs_after: int
    latency: Optional[dict[str, float]] = None
    note: str = ""


@dataclass
class DeployReport:
    """See the module docstring. ``dataflow``: how conv-BatchNorm pairs were found (``torch.fx`` or
    the fallback and why); ``layout``: ``"contiguous"`` or ``"channels_last"`` (the parameters'
    memory format; inputs need no conversion: a conv with channels-last weights gives channels-last
    outputs); ``layout_latency``: the whole deployed model in each layout when measured; ``plan``:
    the whole-model plan kept (``"per layer"``: each layer's fastest form alone, ``"fewest MACs"``,
    ``"dense"``) and ``plan_latency`` each plan's measured latency;
    ``latency_before``/``latency_after``: the whole model before and after, side by side; ``batch``:
    the batch size timed (None: nothing timed); ``runtime``: what the latencies were measured in
    (``"eager"`` PyTorch or ``"onnxruntime"``; None: nothing timed); ``macs_*``: the whole model per example."""

    folded: list[Fold] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    layers: list[LayerForm] = field(default_factory=list)
    dataflow: str = "torch.fx"
    layout: str = "contiguous"
    layout_latency: Optional[dict[str, float]] = None
    plan: Optional[str] = None
    plan_latency: Optional[dict[str, float]] = None
    latency_before: Optional[float] = None
    latency_after: Optional[float] = None
    batch: Optional[int] = None
    runtime: Optional[str] = None
    macs_before: int = 0
    macs_after: int = 0
    max_abs_diff: float = 0.0

    @property
    def speedup(self) -> Optional[float]:
        """Measured latency before / after (None where not timed)."""
        if self.latency_before is None or not self.latency_after:
            return None
        return self.latency_before / self.latency_after

    def forms(self) -> dict[str, int]:
        """How many factorized layers took each form."""
        out: dict[str, int] = {}
        for row in self.layers:
            out[row.form] = out.get(row.form, 0) + 1
        return out

    def __str__(self) -> str:
        lines = []
        if self.layers:
            head = ["layer", "type", "form", "factors", "MACs factorized -> deployed (dense)", "latency (ms)", "note"]
            body = [[r.name, r.layer, r.form, r.runs, f"{_num(r.macs_factorized)} -> {_num(r.macs_after)} "
                     f"({_num(r.macs_dense)})", _latencies(r.latency), r.note] for r in self.layers]
            widths = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]
            fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
            lines += [fmt(head), "  ".join("-" * w for w in widths), *(fmt(row) for row in body), ""]
        forms = ", ".join(f"{n} {form}" for form, n in sorted(self.forms().items())) or "none"
        lines.append(f"batch norms: {len(self.folded)} folded, {len(self.kept)} kept (dataflow: {self.dataflow})")
        lines += [f"  kept {name}: {why}" for name, why in self.kept.items()]
        lines.append(f"factorized layers: {forms}")
        layout = f"layout: {self.layout}" + (" (ONNX Runtime lays out activations itself)"
                                             if self.runtime == "onnxruntime" else "")
        if self.layout_latency:
            layout += " (" + ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in self.layout_latency.items()) + ")"
        lines.append(layout)
        if self.plan_latency:
            lines.append("whole model: " + ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in self.plan_latency.items())
                         + f" -> {self.plan}")
        model = f"model: {_num(self.macs_before)} -> {_num(self.macs_after)} MACs per example"
        if self.speedup is not None:
            model += (f"; {self.latency_before * 1e3:.3g} -> {self.latency_after * 1e3:.3g} ms at batch {self.batch} "
                      f"in {self.runtime} ({self.speedup:.2f}x)")
        lines.append(model + f"; outputs match the model before (max abs diff {self.max_abs_diff:.2g})")
        return "\n".join(lines)


def _latencies(latency: Optional[dict[str, float]]) -> str:
    if not latency:
        return "-"
    return ", ".join(f"{k} {v * 1e3:.3g}" for k, v in latency.items())


def _num(v: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return str(v)
