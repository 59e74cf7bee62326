"""Shared by the benchmark scripts: where results files go, and writing them.

Results files are written by the package (``factorch.measure.results``), so a benchmark's file
carries the same environment header as ``factorch bench -o`` and ``factorch sweep -o``: build it
with ``factorch.measure.results.environment(device)`` (add keys for anything else the numbers
depend on). Timing: ``factorch.measure.latency.time_interleaved`` (variants side by side in one
process, interleaved after a warm-up, median) with ``wall_clock(device)`` (CUDA synchronised).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from factorch.measure.results import markdown_table, write_csv, write_markdown

# where results files go: benchmarks/results, or $BENCH_RESULTS_DIR (gpu_suite.sh --smoke writes
# its tiny-size runs elsewhere, never over the measured files)
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or Path(__file__).resolve().parent / "results")


def write_results(stem: str, rows: Sequence[Mapping[str, Any]], env: Mapping[str, Any], notes: Sequence[str] = (),
                  sections: Sequence[str] = ()) -> tuple[Path, Path]:
    """``RESULTS/<stem>.csv`` (the rows, then the environment as constant columns) and
    ``RESULTS/<stem>.md`` (title ``stem``, the environment header, the rows as a table, then the
    ``sections``: more Markdown, e.g. a second table, and the ``notes``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else []
    table = "\n\n".join([markdown_table(columns, [[r.get(k) for k in columns] for r in rows]), *sections])
    csv_path = write_csv(RESULTS / f"{stem}.csv", rows, env=env)
    md_path = write_markdown(RESULTS / f"{stem}.md", stem, env, table, notes=notes)
    return csv_path, md_path
