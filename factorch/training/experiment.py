"""Every scenario of the paper on one model and dataset, then its table and figure.

``run_experiment`` trains each scenario into ``OUT/<scenario>/`` (``original`` first: the
"original-then-dec+E" run starts from its final checkpoint instead of training it again, which the
same seed makes identical) and writes ``OUT/results.md`` and ``OUT/results.csv`` (best and final
test accuracy, the accuracy just before and just after the decomposition, params, MACs, training
time and speedup vs the original; Tables 1-4) and ``OUT/figure.png`` (accuracy against training
time and epoch, Figures 3-6; with ADMM scenarios, ``||W - Z|| / ||W||`` per epoch too).

Two speed-ups, side by side: ``speedup`` is the original's training time over the scenario's
(wall clock of the whole run: it swings with the machine's load), ``throughput_speedup`` the
steady-state cost of one training step (forward+backward at the run's batch size) of the dense
model over the scenario's final model, timed interleaved in one process after the runs
(``factorch.measure.latency.compare``: warm-up, median; one CPU thread by default), which a busy machine
moves alike for both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from factorch.api import reconstruct_
from factorch.io import load, read_checkpoint
from factorch.measure.plots import training_curves
from factorch.measure.latency import Profiler, compare
from factorch.measure.results import environment, markdown_table, write_csv, write_markdown
from factorch.training.config import TrainConfig
from factorch.distributed import Distributed, pick_device
from factorch.training.run import CHECKPOINT, FINAL, print_line, train
from factorch.training.scenarios import Scenario

COLUMNS = ["scenario", "epochs", "best_acc", "final_acc", "acc_before_dec", "acc_after_dec", "params",
           "params_decomposed", "macs", "macs_decomposed", "train_seconds", "speedup", "throughput_speedup",
           "decomposed_layers", "dense_layers"]
THROUGHPUT = dict(warmup=5, runs=30, threads=1)  # the throughput column's timing (see ``throughput``)


@dataclass
class Experiment:
    """The results of ``run_experiment``: one metrics history per scenario, and the files."""

    histories: dict[str, list[dict[str, Any]]]
    rows: list[dict[str, Any]]
    table: Path
    csv: Path
    figure: Path


def run_experiment(base: TrainConfig, scenarios: Sequence[Scenario], out_dir: str | os.PathLike, *,
                   resume: bool = False, command: str = "", log: Callable[[str], None] = print_line,
                   profiler: Optional[Profiler] = None) -> Experiment:
    """Train every scenario (``base`` gives everything but the events) and write table and figure.
    ``profiler``: how the throughput column is timed (default: ``THROUGHPUT`` at the run's batch
    size, forward+backward, on the run's device)."""
    out = Path(out_dir)
    if not resume:
        taken = [s.name for s in scenarios if (out / s.slug / CHECKPOINT).exists()]
        if taken:
            raise ValueError(f"{out} already holds runs ({', '.join(taken)}); pass --resume or choose another --out")
    ordered = sorted(scenarios, key=lambda s: s.name != "original")
    has_original = any(s.name == "original" for s in scenarios)
    histories: dict[str, list[dict[str, Any]]] = {}
    dist = Distributed.from_env(base.device)  # under torchrun: one process group for all the runs
    try:
        with dist.lock(out):  # one experiment per directory (each run locks its own too)
            for s in ordered:
                log(f"== scenario {s.name} ==")
                start = out / "original" / CHECKPOINT if s.after_original and has_original else None
                histories[s.name] = train(s.config(base), out / s.slug, resume=resume, start_from=start,
                                          log=log if dist.is_main else (lambda line: None))
            histories = {s.name: histories[s.name] for s in scenarios}  # the user's order
            table, table_csv, figure = out / "results.md", out / "results.csv", out / "figure.png"
            profiler = profiler or Profiler(batch=base.batch_size, backward=True, channels_last=base.channels_last,
                                            device=str(pick_device(base.device)), **THROUGHPUT)
            speed = None
            if dist.is_main:  # rank 0 alone times and writes
                log("== throughput: every final model against the dense one ==")
                speed = throughput({s.name: out / s.slug / FINAL for s in scenarios}, profiler)
            rows = summarize(histories, {s.name: s for s in scenarios}, speed)
            if dist.is_main:
                env = environment(pick_device(base.device), command=command or None)
                write_markdown(table, f"{base.model} on {base.dataset}: decomposition during training", env,
                               markdown_table(HEAD, [table_cells(r) for r in rows]),
                               extra=settings_lines(base, scenarios, profiler))
                write_csv(table_csv, rows, columns=COLUMNS, digits=None)  # accuracies as the metrics log has them
                training_curves(histories, figure, title=f"{base.model} on {base.dataset}, {base.epochs} epochs")
    finally:
        dist.close()
    return Experiment(histories, rows, table, table_csv, figure)


def throughput(models: dict[str, Path], profiler: Profiler) -> dict[str, float]:
    """Per scenario, the dense model's median forward+backward time over that of the scenario's
    final model (``models``: scenario -> its ``model.pt``): > 1 means it trains faster per step.
    The dense reference is the first model rebuilt dense (``reconstruct_``; all share the dense
    architecture); every model is timed in one ``compare`` call, interleaved, on the same input.
    A dense scenario's ratio shows the measurement's own noise (ideally 1.00)."""
    finals = {name: load(path) for name, path in models.items()}
    dense = load(next(iter(models.values())))
    reconstruct_(dense)
    shape = tuple(read_checkpoint(next(iter(models.values())))["meta"]["input_shape"])  # one example's (C, H, W)
    times = compare({"dense": dense, **{f"scenario {name}": m for name, m in finals.items()}}, shape, profiler)
    key = "forward_backward" if profiler.backward else "forward"
    ref = getattr(times["dense"], key)
    return {name: ref / getattr(times[f"scenario {name}"], key) for name in finals}


def summarize(histories: dict[str, list[dict[str, Any]]], scenarios: dict[str, Scenario],
              speed: Optional[dict[str, float]] = None) -> list[dict[str, Any]]:
    """One table row per scenario (the paper's columns plus MACs and the layer counts);
    ``speed``: the throughput speed-up per scenario (``throughput``)."""
    original = histories.get("original")
    t_orig = original[-1]["time"] if original else None
    rows = []
    for name, h in histories.items():
        events = [r["event"] for r in h if r["event"] and r["event"]["kind"] == "decompose"]
        dec = [r for r in h if r["event"] and r["event"]["kind"] == "decompose"]
        first_dec = h.index(dec[0]) if dec else None
        rows.append({
            "scenario": name, "epochs": len(h),
            # original-then-dec: the accuracy of the decomposed model, as in Table 1's last row
            "best_acc": max(r["test_acc"] for r in (h[first_dec:] if scenarios[name].after_original and dec else h)),
            "final_acc": h[-1]["test_acc"],
            # the decomposition's cost: the last epoch before it, the model right after it
            "acc_before_dec": h[first_dec - 1]["test_acc"] if dec and first_dec else None,
            "acc_after_dec": h[first_dec]["event_test_acc"] if dec else None,
            "params": h[-1]["params"], "macs": h[-1]["macs"],
            "params_decomposed": h[first_dec]["params"] if dec else None,
            "macs_decomposed": h[first_dec]["macs"] if dec else None,
            "train_seconds": h[-1]["time"],
            "seconds_before": h[first_dec - 1]["time"] if scenarios[name].after_original and first_dec else None,
            "speedup": t_orig / h[-1]["time"] if t_orig else None,
            "throughput_speedup": (speed or {}).get(name),
            "decomposed_layers": events[0]["changed"] if events else None,
            "dense_layers": len(events[0]["skipped"]) if events else None,
        })
    return rows


def _num(v: Optional[float]) -> str:
    if v is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.0f}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


HEAD = ["Scenario", "Best acc", "Final acc", "Acc before -> after decomposition", "Params", "Params (decomposed)",
        "MACs", "Training time", "Speedup (training time)", "Speedup (throughput)", "Layers decomposed / left dense"]


def table_cells(r: dict[str, Any]) -> list[str]:
    """One row of the Markdown table, formatted as Elhoushi et al.'s tables (percent, "4.77 h + 0.49 h")."""
    t = _duration(r["train_seconds"])
    if r["seconds_before"] is not None:  # "4.77 hr + 0.49 hr" as in Table 1
        t = f"{_duration(r['seconds_before'])} + {_duration(r['train_seconds'] - r['seconds_before'])}"
    layers = f"{r['decomposed_layers']} / {r['dense_layers']}" if r["decomposed_layers"] is not None else "-"
    speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
    steps = f"{r['throughput_speedup']:.2f}x" if r.get("throughput_speedup") else "-"
    before, after = r["acc_before_dec"], r["acc_after_dec"]
    drop = "-" if after is None else f"{100 * after:.2f}%" if before is None else \
        f"{100 * before:.2f}% -> {100 * after:.2f}% ({100 * (after - before):+.2f})"
    return [r["scenario"], f"{100 * r['best_acc']:.2f}%", f"{100 * r['final_acc']:.2f}%", drop, _num(r["params"]),
            _num(r["params_decomposed"]), _num(r["macs"]), t, speed, steps, layers]


def settings_lines(cfg: TrainConfig, scenarios: Sequence[Scenario] = (), profiler: Optional[Profiler] = None
                   ) -> list[str]:
    """The results file's lines below the environment header: the run's settings, how the two
    speed-ups are measured, and each scenario's events with their own settings."""
    lines = [f"settings: {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr} (x0.1 at "
             f"{', '.join(f'{m:g}' for m in cfg.milestones)} of the epochs), momentum {cfg.momentum}, "
             f"weight decay {cfg.weight_decay}, subset {cfg.subset or 'none'}, seed {cfg.seed}",
             "training time: training passes plus the events (decomposition, reconstruction, ADMM updates), "
             "without test evaluation; speedup (training time): the original's over the scenario's (wall clock, "
             "moves with the machine's load)"]
    if profiler is not None:
        threads = f"{profiler.threads} CPU thread(s)" if profiler.threads else f"{torch.get_num_threads()} CPU threads"
        lines.append(f"speedup (throughput): one training step (forward+backward, batch {profiler.batch or 1}) of the "
                     f"dense model over the scenario's final model, timed side by side in one process after "
                     f"training (interleaved, {profiler.warmup} warm-up calls, median of {profiler.runs}, "
                     f"{threads}); a dense final model shows the measurement's noise")
    lines += [f"{s.name}: {', '.join(repr(e) for e in s.events)}" for s in scenarios if s.events]
    return lines
