"""The per-layer result of ``decompose_``/``plan``: printing it prints a table."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class LayerReport:
    """One candidate layer. ``skipped`` is the reason it stayed dense (None if decomposed).

    ``macs_*`` are per example at the layer's real input size, None where that size is unknown
    (no ``example_input`` was given for a conv); ``error`` is ``||W - W_hat|| / ||W||``.
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

    @property
    def decomposed(self) -> bool:
        return self.skipped is None


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
        head = ["layer", "type", "method", "ranks", "params", "MACs", "rel.err", "note"]
        body = []
        for r in self.rows:
            ranks = "x".join(map(str, r.ranks)) if r.ranks else "-"
            if r.decomposed:
                params = f"{_num(r.params_before)} -> {_num(r.params_after)}"
                macs = f"{_num(r.macs_before)} -> {_num(r.macs_after)}"
                note, err = f"{_ratio(r.macs_before, r.macs_after)} fewer MACs", f"{r.error:.4f}"
            else:
                params, macs, err, note = _num(r.params_before), _num(r.macs_before), "-", f"skipped: {r.skipped}"
            body.append([r.name, r.layer, r.method or "-", ranks, params, macs, err, note])
        t = self.totals()
        body.append(["total", "", "", "", f"{_num(t['params_before'])} -> {_num(t['params_after'])}",
                     f"{_num(t['macs_before'])} -> {_num(t['macs_after'])}", "",
                     f"{len(self.decomposed)} decomposed, {len(self.skipped)} skipped"])
        widths = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]
        fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
        sep = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(head), sep] + [fmt(row) for row in body[:-1]] + [sep, fmt(body[-1])])
