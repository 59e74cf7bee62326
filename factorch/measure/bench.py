"""Dense vs factorized vs rebuilt-dense latency, per layer and for the whole model.

``docs/math.md``, "Speed-up reality": the theoretical speed-up is ``MACs_dense / MACs_factorized``; the measured
one is what the hardware gives. For each decomposed layer (and for the whole model) three
variants are timed side by side on the same input (``factorch.measure.latency.compare``: warm-up,
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
from typing import Any, Iterator, Optional, Sequence

from torch import nn

from factorch.api import decompose_, reconstruct_
from factorch.measure.count import count
from factorch.measure.latency import Latency, Profiler, compare
from factorch.measure.results import markdown_table
from factorch.progress import track
from factorch.report import Report
from factorch.selection import Config
from factorch.surgery import FilterFn, get_module

__all__ = ["Bench", "BenchRow", "TextTable", "bench", "format_table", "require_decomposed"]

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


class Bench:
    """A model decomposed for timing: ``report`` (what ``decompose_`` did to a copy) is known at
    once; ``rows(profiler)`` then times layer after layer, yielding each row when it is
    measured, so a long benchmark shows its results as they come (``factorch bench``).

    Raises ``ValueError`` when no layer gets decomposed (e.g. EVBMF on random-init weights gives
    rank 0). ``model`` is not changed.
    """

    def __init__(self, model: nn.Module, methods: Config, example_input: Any,
                 filter_fn: Optional[FilterFn] = None) -> None:
        self.model, self.example_input = model, example_input
        self.small = copy.deepcopy(model)
        self.report = decompose_(self.small, methods, filter_fn=filter_fn, example_input=example_input)
        require_decomposed(self.report, "there is nothing to time")
        self.rebuilt = copy.deepcopy(self.small)
        reconstruct_(self.rebuilt)

    def labels(self) -> list[tuple[str, str, str]]:
        """(layer, type, ranks) of the rows ``rows`` yields, in order: the table's first columns."""
        return [(r.name, r.layer, "x".join(map(str, r.ranks))) for r in self.report.decomposed] + \
            [(MODEL, type(self.model).__name__, "")]

    def rows(self, profiler: Profiler = Profiler(backward=True)) -> Iterator[BenchRow]:
        """Time the dense, factorized and rebuilt form of every decomposed layer, then of the whole
        model; the batch is ``profiler.batch`` (default: ``example_input``'s)."""
        x = self.example_input[0] if isinstance(self.example_input, tuple) else self.example_input
        batch = profiler.batch or int(x.shape[0])
        shapes = {r.name: r.input_shape for r in count(self.model, self.example_input).layers}
        for r, (name, kind, ranks) in zip(track(self.report.decomposed, desc="bench"), self.labels()):
            variants = {"dense": get_module(self.model, name), "factorized": get_module(self.small, name),
                        "rebuilt": get_module(self.rebuilt, name)}
            yield _row(name, kind, ranks, batch, (r.macs_before, r.macs_after),
                       compare(variants, shapes[name], profiler, batch))
        t = compare({"dense": self.model, "factorized": self.small, "rebuilt": self.rebuilt},
                    tuple(x.shape[1:]), profiler, batch)
        macs = (count(self.model, self.example_input).macs, count(self.small, self.example_input).macs)
        yield _row(*self.labels()[-1], batch, macs, t)


def bench(model: nn.Module, methods: Config, example_input: Any, profiler: Profiler = Profiler(backward=True),
          filter_fn: Optional[FilterFn] = None) -> tuple[Report, list[BenchRow]]:
    """Decompose a copy of ``model`` with ``methods``, rebuild a dense copy from it, and time the
    three variants of every decomposed layer and of the whole model (``Bench``, all rows at once).

    ``example_input``: one example with its batch dim (gives each layer's input size); the timing
    batch is ``profiler.batch`` (default: ``example_input``'s).
    """
    measured = Bench(model, methods, example_input, filter_fn)
    return measured.report, list(measured.rows(profiler))


def require_decomposed(report: Report, consequence: str) -> None:
    """``ValueError`` when ``report`` decomposed no layer: the reasons with their counts, what
    that means here (``consequence``), and the usual cure for rank 0 on random-init weights."""
    if report.decomposed:
        return
    reasons = Counter(r.skipped for r in report.skipped).most_common()
    said = "; ".join(f"{n} x {reason}" for reason, n in reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
    hint = "; random-init weights give EVBMF rank 0: load trained weights or use a fixed rank (e.g. 0.25)" \
        if any(reason.startswith("rank 0 from EVBMF") for reason, _ in reasons) else ""
    raise ValueError(f"no layer was decomposed ({said or 'the model has no layer a method handles'}), so {consequence}{hint}")


HEAD = ["layer", "type", "ranks", "MACs x", "fwd dense ms", "fwd fact. ms", "fwd rebuilt ms", "fwd x"]
TRAIN_HEAD = ["train dense ms", "train fact. ms", "train rebuilt ms", "train x"]


def _cells(r: BenchRow, train: bool) -> list[str]:
    line = [r.layer, r.kind, r.ranks, f"{r.mac_speedup:.2f}", f"{r.dense_ms:.3f}", f"{r.factorized_ms:.3f}",
            f"{r.rebuilt_ms:.3f}", f"{r.speedup:.2f}"]
    if train:
        line += [f"{r.dense_train_ms:.3f}", f"{r.factorized_train_ms:.3f}", f"{r.rebuilt_train_ms:.3f}",
                 f"{r.train_speedup:.2f}"]
    return line


class TextTable:
    """The text table, printable a row at a time: widths come from the rows' labels (known
    before any timing, ``Bench.labels``) and the headers; the whole-model row follows a rule."""

    def __init__(self, labels: Sequence[tuple[str, str, str]], train: bool) -> None:
        self.head = HEAD + (TRAIN_HEAD if train else [])
        self.train = train
        self.widths = [max([len(h)] + [len(label[i]) for label in labels]) if i < 3 else max(len(h), 8)
                       for i, h in enumerate(self.head)]

    def _format(self, cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, self.widths)))

    def rule(self) -> str:
        return "  ".join("-" * w for w in self.widths)

    def header(self) -> str:
        return self._format(self.head) + "\n" + self.rule()

    def line(self, row: BenchRow) -> str:
        text = self._format(_cells(row, self.train))
        return self.rule() + "\n" + text if row.layer == MODEL else text


def format_table(rows: Sequence[BenchRow], markdown: bool = False) -> str:
    """A text (or Markdown) table: theoretical vs measured speed-up, forward and forward+backward."""
    train = any(r.train_speedup is not None for r in rows)
    if markdown:
        return markdown_table(HEAD + (TRAIN_HEAD if train else []), [_cells(r, train) for r in rows])
    table = TextTable([(r.layer, r.kind, r.ranks) for r in rows], train)
    return "\n".join([table.header()] + [table.line(r) for r in rows])


def columns() -> list[str]:
    """CSV column names, in order."""
    return [f.name for f in fields(BenchRow)]
