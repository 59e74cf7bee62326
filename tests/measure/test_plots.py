"""The experiment figure: every scenario can be told apart (its own line style and marker, in the
legend) even where two scenarios draw the same curve, and the event markers are explained."""
import os
import stat
import subprocess
import sys

import factorch.measure.plots as plots


def _rows(epochs, events=(), time_per_epoch=1.0):
    rows = []
    for e in range(1, epochs + 1):
        kind = dict(events).get(e)
        rows.append({"epoch": e, "time": e * time_per_epoch, "test_acc": 0.5 + 0.04 * min(e, 10),
                     "event": {"kind": kind} if kind else None, "event_test_acc": 0.4 if kind else None})
    return rows


def test_every_scenario_is_drawn_apart_and_the_markers_are_in_the_legend(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    runs = {"original": _rows(12), "dec@3": _rows(12, [(4, "decompose")]),
            # dec@3 and dec@3+rec@10 are the same run up to epoch 10: the same points
            "dec@3+rec@10": _rows(12, [(4, "decompose"), (11, "reconstruct")])}
    plots.training_curves(runs, tmp_path / "figure.png")
    ax_t = figures[0].axes[0]
    curves = {line.get_label(): line for line in ax_t.get_lines() if line.get_label() in runs}
    assert sorted(curves) == sorted(runs)
    styles = {(c.get_linestyle(), c.get_marker()) for c in curves.values()}
    assert len(styles) == len(runs) and all(marker not in ("None", "", None) for _, marker in styles)
    # the later scenario is drawn above, thinner: the one below still shows around it
    assert curves["dec@3+rec@10"].get_zorder() > curves["dec@3"].get_zorder()
    assert curves["dec@3+rec@10"].get_linewidth() < curves["dec@3"].get_linewidth()
    assert curves["dec@3+rec@10"].get_markersize() < curves["dec@3"].get_markersize()
    legend = [t.get_text() for t in ax_t.get_legend().get_texts()]
    assert legend == ["original", "dec@3", "decomposed", "dec@3+rec@10", "reconstructed"]
    assert ax_t.get_legend().get_title().get_text() == "scenario (line, marker); event"


def test_a_figure_is_written_atomically_and_a_killed_writers_temp_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    stale = tmp_path / f".figure.png.pid{dead}.abcd1234.tmp"
    stale.write_bytes(b"half a PNG")
    old = os.umask(0o022)
    try:
        path = plots.training_curves({"original": _rows(3)}, tmp_path / "figure.png")
    finally:
        os.umask(old)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]
