"""Result files of ``factorch sweep`` / ``factorch bench``: CSV, Markdown (with the device, torch
version, date and exact command) and PNG, each written whole or not at all
(``factorch.io.atomic_write_text``)."""
from __future__ import annotations

import csv
import datetime
import io
import os
import platform
import shlex
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch


_COMMAND: list[str] = []  # the running command's arguments (set by ``factorch.cli.main.run``)


def record_command(argv: Sequence[str]) -> None:
    _COMMAND[:] = list(argv)


def device_name(device: str, threads: Optional[int] = None) -> str:
    """A readable name of ``device`` (the GPU's, or the CPU model and the threads timed with)."""
    if str(device).startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"cpu ({cpu}, {os.cpu_count()} cores, torch threads {threads or torch.get_num_threads()})"


def environment(device: str, threads: Optional[int] = None) -> dict[str, str]:
    """device, torch version, UTC date and the command line, for result files."""
    return {"device": device_name(device, threads), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "factorch " + " ".join(shlex.quote(a) for a in _COMMAND)}


def markdown(title: str, env: dict[str, str], body: str, notes: Sequence[str] = ()) -> str:
    head = [f"# {title}", "", *(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in env.items())]
    tail = ["", "Notes:", "", *(f"- {n}" for n in notes)] if notes else []
    return "\n".join(head + ["", body] + tail) + "\n"


def check_output_dir(prefix: str) -> None:
    """Fail before any work when the output directory does not exist."""
    parent = Path(prefix).parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {prefix!r}.*: directory {str(parent)!r} does not exist")


def csv_text(rows: Sequence[Mapping[str, Any]], constants: Optional[Mapping[str, str]] = None) -> str:
    """Rows (dicts with the same keys) as CSV; ``constants`` (device, torch version) become columns.
    Floats keep 6 significant digits; None is an empty cell."""
    extra = dict(constants or {})
    out = io.StringIO()
    names = list(rows[0]) if rows else []
    writer = csv.DictWriter(out, fieldnames=names + list(extra), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in row.items()}
        writer.writerow({**cells, **extra})
    return out.getvalue()
