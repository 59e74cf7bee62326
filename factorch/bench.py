"""Dense vs factorized vs rebuilt-dense latency, per layer and for the whole model.

methods.md section 7: the theoretical speed-up is ``MACs_dense / MACs_factorized``; the measured
one is what the hardware gives. For each decomposed layer (and for the whole model) three
variants are timed side by side on the same input (``factorch.profile.compare``: warm-up,
interleaved runs, median, CUDA events on a GPU):

* ``dense``: the original layer;
* ``factorized``: the chain of factor layers ``fc.decompose_`` put in its place;
* ``rebuilt``: the dense layer multiplied back from the factors (``to_dense``; tltorch's
  "reconstructed" implementation): the original's cost with the decomposed weights.

Forward is timed in eval mode without grad; forward+backward in train mode (a training step).
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence

from torch import nn

from factorch.api import decompose_, reconstruct_
from factorch.count import count
from factorch.profile import Latency, Profiler, compare
from factorch.progress import track
from factorch.report import Report
from factorch.selection import Config
from factorch.surgery import FilterFn, get_module

__all__ = ["BenchRow", "bench", "format_table", "require_decomposed"]

MODEL = "(whole model)"


@dataclass(frozen=True)
class BenchRow:
    """One layer (or the whole model, ``layer == "(whole model)"``); latencies in ms (median per
    call at ``batch``); speed-ups are dense / factorized (> 1: the factorized form is faster)."""

    layer: str
    kind: str
    ranks: str
    batch: int
    macs_dense: int
    macs_factorized: int
    mac_speedup: float
    dense_ms: float
    factorized_ms: float
    rebuilt_ms: float
    speedup: float
    dense_train_ms: Optional[float]
    factorized_train_ms: Optional[float]
    rebuilt_train_ms: Optional[float]
    train_speedup: Optional[float]


def _row(layer: str, kind: str, ranks: str, batch: int, macs: tuple[int, int], t: dict[str, Latency]) -> BenchRow:
    d, f, r = t["dense"], t["factorized"], t["rebuilt"]
    ms = lambda v: None if v is None else v * 1e3
    train = d.forward_backward is not None
    return BenchRow(layer, kind, ranks, batch, macs[0], macs[1], macs[0] / macs[1], d.forward * 1e3,
                    f.forward * 1e3, r.forward * 1e3, d.forward / f.forward, ms(d.forward_backward),
                    ms(f.forward_backward), ms(r.forward_backward),
                    d.forward_backward / f.forward_backward if train else None)


def bench(model: nn.Module, methods: Config, example_input: Any, profiler: Profiler = Profiler(backward=True),
          filter_fn: Optional[FilterFn] = None) -> tuple[Report, list[BenchRow]]:
    """Decompose a copy of ``model`` with ``methods``, rebuild a dense copy from it, and time the
    three variants of every decomposed layer and of the whole model; ``model`` is not changed.

    ``example_input``: one example with its batch dim (gives each layer's input size); the timing
    batch is ``profiler.batch`` (default: ``example_input``'s). Raises ``ValueError`` when no
    layer gets decomposed (e.g. EVBMF on random-init weights gives rank 0).
    """
    small = copy.deepcopy(model)
    report = decompose_(small, methods, filter_fn=filter_fn, example_input=example_input)
    require_decomposed(report, "there is nothing to time")
    rebuilt = copy.deepcopy(small)
    reconstruct_(rebuilt)
    x = example_input[0] if isinstance(example_input, tuple) else example_input
    batch = profiler.batch or int(x.shape[0])
    shapes = {r.name: r.input_shape for r in count(model, example_input).layers}
    rows = []
    for r in track(report.decomposed, desc="bench"):
        variants = {"dense": get_module(model, r.name), "factorized": get_module(small, r.name),
                    "rebuilt": get_module(rebuilt, r.name)}
        t = compare(variants, shapes[r.name], profiler, batch)
        rows.append(_row(r.name, r.layer, "x".join(map(str, r.ranks)), batch, (r.macs_before, r.macs_after), t))
    t = compare({"dense": model, "factorized": small, "rebuilt": rebuilt}, tuple(x.shape[1:]), profiler, batch)
    macs = (count(model, example_input).macs, count(small, example_input).macs)
    rows.append(_row(MODEL, type(model).__name__, "", batch, macs, t))
    return report, rows


def require_decomposed(report: Report, consequence: str) -> None:
    """``ValueError`` when ``report`` decomposed no layer: the reasons with their counts, what
    that means here (``consequence``), and the usual cure for rank 0 on random-init weights."""
    if report.decomposed:
        return
    reasons = Counter(r.skipped for r in report.skipped).most_common()
    said = "; ".join(f"{n} x {reason}" for reason, n in reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
    hint = "; random-init weights give EVBMF rank 0: load trained weights or use a fixed rank (e.g. 0.25)" \
        if any(reason.startswith("rank 0") for reason, _ in reasons) else ""
    raise ValueError(f"no layer was decomposed ({said or 'the model has no layer a method handles'}), so {consequence}{hint}")


def format_table(rows: Sequence[BenchRow], markdown: bool = False) -> str:
    """A text (or Markdown) table: theoretical vs measured speed-up, forward and forward+backward."""
    train = any(r.train_speedup is not None for r in rows)
    head = ["layer", "type", "ranks", "MACs x", "fwd dense ms", "fwd fact. ms", "fwd rebuilt ms", "fwd x"]
    if train:
        head += ["train dense ms", "train fact. ms", "train rebuilt ms", "train x"]
    body = []
    for r in rows:
        line = [r.layer, r.kind, r.ranks, f"{r.mac_speedup:.2f}", f"{r.dense_ms:.3f}", f"{r.factorized_ms:.3f}",
                f"{r.rebuilt_ms:.3f}", f"{r.speedup:.2f}"]
        if train:
            line += [f"{r.dense_train_ms:.3f}", f"{r.factorized_train_ms:.3f}", f"{r.rebuilt_train_ms:.3f}",
                     f"{r.train_speedup:.2f}"]
        body.append(line)
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                         ["| " + " | ".join(line) + " |" for line in body])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(head), sep] + [fmt(line) for line in body[:-1]] + [sep, fmt(body[-1])])


def columns() -> list[str]:
    """CSV column names, in order."""
    return [f.name for f in fields(BenchRow)]
