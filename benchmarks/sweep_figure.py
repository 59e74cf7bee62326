"""Redraw the figure of a ``factorch sweep`` from its CSV (no recomputation).

    python benchmarks/sweep_figure.py benchmarks/results/sweep_vgg16_fashion_features3.csv [OUT.png]

Writes OUT.png (default: the CSV's name with .png) with ``factorch.measure.plots.sweep_panels``.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from factorch.measure.plots import sweep_panels

INTS = {"rank", "params_dense", "params_factorized", "macs_dense", "macs_factorized", "batch", "finetune_epochs"}
TEXT = {"layer", "method", "ranks", "note", "device", "torch"}


def read_rows(path: Path) -> list[dict]:
    """The sweep CSV's rows with numbers parsed (empty cells -> None, "nan" -> NaN)."""
    def value(key: str, text: str):
        if key in TEXT:
            return text
        if text == "":
            return None
        return int(text) if key in INTS else float(text)
    with path.open() as f:
        return [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("png", type=Path, nargs="?")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    out = sweep_panels(read_rows(args.csv), args.png or args.csv.with_suffix(".png"), title=args.title)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
