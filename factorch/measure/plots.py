"""Figures as PNG files (matplotlib, imported when a figure is drawn; the Agg backend, no display).

``training_curves``: the figure of Elhoushi et al. 2019 (Figures 3-6): test accuracy against
wall-clock training time, one curve per scenario (its own line style and marker, in the legend, so
curves that coincide for some epochs stay apart), decompositions and reconstructions marked; with
ADMM runs (Yin et al. 2021) a third panel: ``||W - Z|| / ||W||`` (mean over the layers) per epoch.

``sweep_panels``: the four panels of Cao 2022's rank sweeps per swept layer and method: parameter
reduction, speed-up (measured, with the theoretical MAC reduction), approximation error (Eq. 14)
and accuracy drop (right after decomposition and after fine-tuning), each against the rank.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from factorch.files import atomic_write_bytes
from factorch.io import CheckpointError

MARKERS = {"decompose": ("v", "decomposed"), "reconstruct": ("^", "reconstructed")}
# one (line style, point marker) per scenario: runs that share their first epochs (dec@K and
# dec@K+rec@M) draw the same curve up to M, and must still both be seen there
SCENARIO_STYLES = [("-", "o"), ("--", "s"), ("-.", "D"), (":", "P"), ("-", "X"), ("--", "*"), ("-.", "h"), (":", "p")]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay ``fig`` out tightly, write it to ``path`` atomically (``io.atomic_write_bytes``: never
    a half-written PNG, the umask's mode, temps of killed writers removed) and close it."""
    plt, path = pyplot(), Path(path)
    try:
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, dpi=dpi, format=path.suffix.lstrip(".") or "png")
        atomic_write_bytes(png.getvalue(), path)
    finally:
        plt.close(fig)
    return path


def _time_unit(seconds: float) -> tuple[float, str]:
    for scale, unit in ((3600.0, "hours"), (60.0, "minutes")):
        if seconds >= 2 * scale:
            return scale, unit
    return 1.0, "seconds"


def training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike,
                    title: str = "") -> Path:
    """Plot per-epoch metrics rows (``time``, ``test_acc``, ``epoch``, ``event``) of each run:
    accuracy vs cumulative training time (left) and vs epoch (middle); where rows carry
    ``admm_distance``, ADMM's mean ``||W - Z|| / ||W||`` vs epoch (right). Returns the PNG path."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    plt = pyplot()
    longest = max((rows[-1]["time"] for rows in runs.values() if rows), default=0.0)
    scale, unit = _time_unit(longest)
    distances = {name: [(r["epoch"], r["admm_distance"]["mean"]) for r in rows if r.get("admm_distance")]
                 for name, rows in runs.items()}
    if any(distances.values()):
        fig, (ax_t, ax_e, ax_d) = plt.subplots(1, 3, figsize=(17, 4.5))
        ax_e.sharey(ax_t)
    else:
        fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    labelled: set[str] = set()
    for i, (name, rows) in enumerate(runs.items()):
        if not rows:
            continue
        color = f"C{i % 10}"
        times = [r["time"] / scale for r in rows]
        accs = [100 * r["test_acc"] for r in rows]
        epochs = [r["epoch"] for r in rows]
        # earlier scenarios wider, with larger markers, and below: a later one drawn over a shared
        # stretch leaves them visible around it
        line, point = SCENARIO_STYLES[i % len(SCENARIO_STYLES)]
        every = max(1, len(rows) // 12)
        style = dict(color=color, label=name, ls=line, marker=point, ms=max(3.0, 8.0 - 1.5 * i),
                     markevery=(i % every, every), lw=max(1.0, 3.2 - 0.6 * i), zorder=2 + i)
        ax_t.plot(times, accs, **style)
        ax_e.plot(epochs, accs, **style)
        if distances.get(name):
            ax_d.plot(*zip(*distances[name]), "o-", color=color, label=name, ms=3)
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
    ax_t.legend(loc="lower right", fontsize=8, title="scenario (line, marker); event", title_fontsize=8)
    if any(distances.values()):
        ax_d.set_yscale("log")
        ax_d.set_xlabel("epoch")
        ax_d.set_ylabel("ADMM ||W - Z|| / ||W|| (mean over layers)")
        ax_d.grid(alpha=0.3, which="both")
        ax_d.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def sweep_panels(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """One figure row per (layer, method) of a rank sweep (``factorch.measure.sweep.SweepRow`` as dicts),
    four panels against the rank. Points that were not decomposed (no ``params_factorized``) are left
    out; a decomposed point with a ``note`` (e.g. a capped rank) is drawn. Returns the path."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("params_factorized") in (None, ""):
            continue
        groups.setdefault((r["layer"], r["method"]), []).append(r)
    if not groups:
        raise ValueError("nothing to plot: no swept point was decomposed")
    plt = pyplot()
    fig, axes = plt.subplots(len(groups), 4, figsize=(17, 3.4 * len(groups)), squeeze=False)
    for key, ax_row in zip(groups, axes):
        _panel_row(key, sorted(groups[key], key=lambda r: r["rank"]), ax_row)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _panel_row(key: tuple[str, str], pts: list[Mapping[str, Any]], axes: Sequence[Any]) -> None:
    layer, method = key
    ranks = [p["rank"] for p in pts]
    ax_p, ax_s, ax_e, ax_a = axes
    ax_p.plot(ranks, [p["param_reduction"] for p in pts], "o-", color="C0", label="parameters")
    ax_p.plot(ranks, [p["mac_reduction"] for p in pts], "s--", color="C7", label="MACs")
    ax_p.set_ylabel("reduction (x)")
    ax_p.set_title(f"{layer} {method}: parameter reduction", fontsize=10)
    ax_s.plot(ranks, [p["speedup"] for p in pts], "o-", color="C1", label=f"measured (batch {pts[0]['batch']})")
    ax_s.plot(ranks, [p["mac_reduction"] for p in pts], "s--", color="C7", label="theoretical (MACs)")
    ax_s.axhline(1.0, color="black", lw=0.8, ls=":")
    ax_s.set_ylabel("layer speed-up (x)")
    ax_s.set_title(f"{layer} {method}: speed-up", fontsize=10)
    ax_e.plot(ranks, [p["error"] for p in pts], "o-", color="C3", label="||W - W_hat|| / ||W||")
    ax_e.set_ylabel("relative error")
    ax_e.set_ylim(bottom=0)
    ax_e.set_title(f"{layer} {method}: approximation error (Eq. 14)", fontsize=10)
    ax_a.plot(ranks, [100 * p["accuracy_drop"] for p in pts], "o-", color="C2", label="decomposed")
    tuned = [p for p in pts if not _missing(p.get("accuracy_drop_finetuned"))]
    if tuned:
        epochs = tuned[0]["finetune_epochs"]
        ax_a.plot([p["rank"] for p in tuned], [100 * p["accuracy_drop_finetuned"] for p in tuned], "o-",
                  color="C4", label=f"after {epochs} fine-tuning epoch{'s' if epochs != 1 else ''}")
    ax_a.axhline(0.0, color="black", lw=0.8, ls=":")
    ax_a.set_ylabel("accuracy drop (points)")
    ax_a.set_title(f"{layer} {method}: accuracy drop (dense {100 * pts[0]['accuracy_dense']:.2f}%)", fontsize=10)
    from matplotlib.ticker import NullFormatter, NullLocator, ScalarFormatter

    for ax in (ax_p, ax_s):  # ratios: a log axis shows 1.5x next to 100x
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
    log_x = max(ranks) / max(min(ranks), 1) >= 8
    for ax in axes:
        ax.set_xlabel("rank")
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(ranks)  # the swept ranks themselves, as plain numbers
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def _missing(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))
