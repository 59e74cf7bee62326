"""The one writer of results files: ``factorch bench -o``, ``factorch sweep -o``, the benchmark
scripts and the experiment's ``results.md``/``results.csv`` all write through here, so every file
names where and how it was measured with the same header lines, built by one function and
rendered by one function:

* ``environment(device)``: the device (CPU model or GPU name), torch's CPU threads, the machine's
  1-minute load average (other jobs slow the variants down unevenly: a number measured on a busy
  machine says so), the versions of torch, Python, factorch and NumPy, the UTC date and the exact
  command line; callers may add keys of their own (e.g. an environment variable that matters);
* ``header(env)``: that environment as Markdown bullet lines, the command last;
* ``markdown_table`` / ``markdown_text`` / ``write_markdown``: a table; a whole document (title,
  header, extra bullet lines, the table, notes);
* ``csv_text`` / ``write_csv``: rows as CSV (floats at 6 significant digits, None an empty cell),
  optionally with environment columns.

Every file is rendered whole before it is written and then written with
``factorch.files.atomic_write_text``: a failed write never leaves a half-written file, and leaves
a previous file of that name as it was.
"""
from __future__ import annotations

import csv
import datetime
import io
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch

from factorch.files import atomic_write_text

__all__ = ["ENVIRONMENT_KEYS", "check_output_dir", "command_line", "csv_environment", "csv_text", "device_name",
           "environment", "header", "markdown_table", "markdown_text", "record_command", "write_csv",
           "write_markdown"]

# the keys of ``environment``, in the order the header lists them (the command always last)
ENVIRONMENT_KEYS = ("device", "torch threads", "load average (1 min)", "torch", "python", "factorch", "numpy",
                    "date", "command")

_COMMAND: list[str] = []  # the running CLI command (``record_command``), program name first


def record_command(argv: Optional[Sequence[str]], program: str = "factorch") -> None:
    """Name the running command in result files as ``program ARGV`` (``factorch.cli.main.run`` calls
    it with its arguments); ``None`` forgets it, so that later files name this process's
    ``sys.argv`` again."""
    _COMMAND[:] = [] if argv is None else [program, *argv]


def command_line() -> str:
    """The command that produced the results, as a shell line: the recorded CLI command, else this
    process's ``python SCRIPT ARGS`` (the script as given, made relative to the working directory
    when it lies below it: a file names no machine's absolute path for the script)."""
    if _COMMAND:
        return shlex.join(_COMMAND)
    argv = list(sys.argv) or [""]
    script = Path(argv[0])
    if script.is_absolute():
        try:
            script = script.relative_to(Path.cwd())
        except ValueError:
            script = Path(script.name)
    return shlex.join(["python", str(script), *argv[1:]]) if argv[0] else "python"


def _device(device: Union[str, torch.device]) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None


def device_name(device: Union[str, torch.device]) -> str:
    """A readable name of ``device``: the GPU's (``cuda:0 (NVIDIA ...)``), or the CPU model with
    the cores this process may use (``cpu (AMD EPYC 7B13, 2 cores)``, ``..., 2 of 8 cores``)."""
    dev = _device(device)
    if dev.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(dev)})"
    if dev.type != "cpu":
        return str(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    total = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    cores = f"{total} cores" if usable == total else f"{usable} of {total} cores"
    return f"cpu ({cpu}, {cores})"


def _version(package: str) -> str:
    """An installed package's version, read from its metadata (the package is not imported)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(device: Union[str, torch.device] = "cpu", *, threads: Optional[int] = None,
                command: Optional[str] = None) -> dict[str, str]:
    """Where and how results were measured, as the header of every results file (``ENVIRONMENT_KEYS``):
    ``device_name(device)``, ``threads`` (default: torch's current CPU threads), the 1-minute load
    average of the whole machine, the versions of torch, Python, factorch and NumPy, the UTC date,
    and ``command`` (default: ``command_line()``). Add keys to the returned dict for anything else
    the numbers depend on."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
    from factorch import __version__

    load = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown"
    return {"device": device_name(device), "torch threads": str(threads or torch.get_num_threads()),
            "load average (1 min)": load, "torch": torch.__version__, "python": platform.python_version(),
            "factorch": __version__, "numpy": _version("numpy"),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command or command_line()}


def csv_environment(env: Mapping[str, Any]) -> dict[str, Any]:
    """The environment columns of the CLI's CSV files: torch threads, device and torch version (the
    whole environment heads the Markdown file written next to it)."""
    return {k: env[k] for k in ("torch threads", "device", "torch")}


def header(env: Mapping[str, Any]) -> str:
    """``env`` as Markdown bullet lines (``- key: value``), the command last and as code."""
    keys = [k for k in env if k != "command"] + (["command"] if "command" in env else [])
    return "\n".join(f"- {k}: `{env[k]}`" if k == "command" else f"- {k}: {env[k]}" for k in keys)


def _markdown_cell(value: Any) -> str:
    if value is None:
        return ""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table: the ``columns`` as its head, one line per row. Cells are written as given
    when they are strings (format them first for a fixed number of decimals or a unit), floats at
    4 significant digits, None as an empty cell."""
    lines = ["| " + " | ".join(map(_markdown_cell, columns)) + " |", "|" + "---|" * len(columns)]
    for i, row in enumerate(rows):
        cells = list(row)
        if len(cells) != len(columns):
            raise ValueError(f"table row {i} has {len(cells)} cells for {len(columns)} columns: {cells!r}")
        lines.append("| " + " | ".join(map(_markdown_cell, cells)) + " |")
    return "\n".join(lines)


def markdown_text(title: str, env: Mapping[str, Any], table: str, *, extra: Sequence[str] = (),
                  notes: Sequence[str] = ()) -> str:
    """A results document: ``# title``, the environment ``header``, the ``extra`` lines as more
    bullets (settings, how a column was measured), the ``table`` (any Markdown: usually
    ``markdown_table``'s, more sections may follow it), and the ``notes`` as a bulleted list."""
    lines = [f"# {title}", "", header(env), *(f"- {line}" for line in extra), "", table.rstrip("\n")]
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def write_markdown(path: Union[str, os.PathLike], title: str, env: Mapping[str, Any], table: str, *,
                   extra: Sequence[str] = (), notes: Sequence[str] = ()) -> Path:
    """Write ``markdown_text(...)`` to ``path``, whole or not at all; returns the path."""
    atomic_write_text(markdown_text(title, env, table, extra=extra, notes=notes), path)
    return Path(path)


def _csv_cell(value: Any, digits: Optional[int] = 6) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}g}"
    return value


def csv_text(rows: Sequence[Mapping[str, Any]], *, columns: Optional[Sequence[str]] = None,
             env: Optional[Mapping[str, Any]] = None, digits: Optional[int] = 6) -> str:
    """Rows (mappings) as CSV. ``columns``: which keys, in order (a row's other keys are left out);
    default: the first row's keys (a later row with another key is a ``ValueError``). A missing key
    is an empty cell. ``env``: constant columns after them (the environment, or a few of its keys).
    Floats keep ``digits`` significant digits (None: every digit, e.g. accuracies that other files
    must match exactly); None is an empty cell."""
    names = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    if columns is None:
        for i, row in enumerate(rows):
            unknown = [k for k in row if k not in names]
            if unknown:
                raise ValueError(f"CSV row {i} has keys {unknown} that row 0 has not: give columns= to choose")
    extra = {k: _csv_cell(v) for k, v in (env or {}).items()}
    clash = sorted(set(extra) & set(names))
    if clash:
        raise ValueError(f"environment columns {clash} clash with the rows' columns")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=names + list(extra), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{k: _csv_cell(row.get(k), digits) for k in names}, **extra})
    return out.getvalue()


def write_csv(path: Union[str, os.PathLike], rows: Sequence[Mapping[str, Any]], *,
              columns: Optional[Sequence[str]] = None, env: Optional[Mapping[str, Any]] = None,
              digits: Optional[int] = 6) -> Path:
    """Write ``csv_text(rows, ...)`` to ``path``, whole or not at all; returns the path."""
    atomic_write_text(csv_text(rows, columns=columns, env=env, digits=digits), path)
    return Path(path)


def check_output_dir(prefix: Union[str, os.PathLike]) -> None:
    """Fail before any work when the output directory does not exist."""
    parent = Path(prefix).parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {str(prefix)!r}.*: directory {str(parent)!r} does not exist")
