"""Figures as PNG files (matplotlib, imported when a figure is drawn; the Agg backend, no display).

``training_curves``: the figure of seed 000 (Elhoushi et al., Figures 3-6): test accuracy against
wall-clock training time, one curve per scenario, decompositions and reconstructions marked.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from factorch.io import CheckpointError

MARKERS = {"decompose": ("v", "decomposed"), "reconstruct": ("^", "reconstructed")}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _time_unit(seconds: float) -> tuple[float, str]:
    for scale, unit in ((3600.0, "hours"), (60.0, "minutes")):
        if seconds >= 2 * scale:
            return scale, unit
    return 1.0, "seconds"


def training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike,
                    title: str = "") -> Path:
    """Plot per-epoch metrics rows (``time``, ``test_acc``, ``epoch``, ``event``) of each run:
    accuracy vs cumulative training time (left) and vs epoch (right). Returns the PNG path."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    plt = _pyplot()
    longest = max((rows[-1]["time"] for rows in runs.values() if rows), default=0.0)
    scale, unit = _time_unit(longest)
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    labelled: set[str] = set()
    for i, (name, rows) in enumerate(runs.items()):
        if not rows:
            continue
        color = f"C{i % 10}"
        times = [r["time"] / scale for r in rows]
        accs = [100 * r["test_acc"] for r in rows]
        epochs = [r["epoch"] for r in rows]
        # the original on top: other scenarios share its first epochs
        style = dict(color=color, label=name, lw=2.2 if name == "original" else 1.4, zorder=3 if name == "original" else 2)
        ax_t.plot(times, accs, **style)
        ax_e.plot(epochs, accs, **style)
        for j, r in enumerate(rows):
            if not r.get("event"):
                continue
            marker, what = MARKERS.get(r["event"]["kind"], ("o", r["event"]["kind"]))
            t_event = (rows[j - 1]["time"] if j else 0.0) / scale
            acc = 100 * (r.get("event_test_acc") if r.get("event_test_acc") is not None else r["test_acc"])
            label = what if what not in labelled else None
            labelled.add(what)
            for ax, x in ((ax_t, t_event), (ax_e, r["epoch"] - 1)):
                ax.plot([x], [acc], marker=marker, color=color, ms=9, mec="black", ls="none",
                        label=label if ax is ax_t else None)
    ax_t.set_xlabel(f"training time ({unit})")
    ax_e.set_xlabel("epoch")
    ax_t.set_ylabel("test accuracy (%)")
    for ax in (ax_t, ax_e):
        ax.grid(alpha=0.3)
    ax_t.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
