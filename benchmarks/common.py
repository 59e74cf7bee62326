"""Shared by the benchmark scripts: environment description, side-by-side timing, result files.

Timing rule (DESIGN.md rule 9): variants are measured side by side in one process, alternating
one run of each, after a warm-up; the median is reported, CUDA synchronised.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

# where results files go: benchmarks/results, or $BENCH_RESULTS_DIR (gpu_suite.sh --smoke writes
# its tiny-size runs elsewhere, never over the measured files)
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or Path(__file__).resolve().parent / "results")


def environment(device: str = "cpu") -> dict[str, str]:
    """Device, versions and date, written into every results file."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        name = (f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads "
                f"on {cores} of {os.cpu_count()} cores")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "device": name,
        "load average (1 min, whole machine)": f"{load:.2f}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.date.today().isoformat(),
        "command": "python " + " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv)),
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_alternating(fns: Sequence[Callable[[], object]], repeats: int, warmup: int,
                     device: str = "cpu") -> list[float]:
    """Median seconds per call of each function, measured in alternation (f0, f1, ..., f0, ...)
    so drift in machine load hits every variant alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    _sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def write_results(stem: str, rows: list[dict], env: dict[str, str], notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """``results/<stem>.csv`` (rows plus the environment columns) and ``results/<stem>.md``."""
    RESULTS.mkdir(exist_ok=True)
    csv_path, md_path = RESULTS / f"{stem}.csv", RESULTS / f"{stem}.md"
    keys = list(rows[0])
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys + list(env))
        w.writeheader()
        for row in rows:
            w.writerow({**row, **env})
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = [f"# {stem}", "", *(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in env.items()), ""]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    if notes:
        lines += ["", *notes]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
