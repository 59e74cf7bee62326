"""Why a from-scratch factorized run diverged, and what the balanced init changes.

``factorch train --model lenet5 --dataset digits --factorized-from-scratch --method tucker3,svd
--rank budget:params=0.3`` went to a NaN loss at the default lr 0.1. A factor chain moves its
kernel faster per SGD step than a dense layer (the step reaches the kernel through every factor);
with every factor at unit gain and a small core, 3.8x for a Tucker-2 5x5 conv and 13x for Tucker-3
(``FactorizedLayer.balance_``). The balanced init (factors rescaled, kernel unchanged, so each
moves the kernel equally) brings that to the smallest a product allows. This script trains the
run above for 10 epochs at three learning rates and six seeds, with the balanced init and without
(``balance_`` disabled), and records the final test accuracy (``nan``: stopped on a non-finite loss).

    python benchmarks/from_scratch_stability.py   -> benchmarks/results/from_scratch_stability.{csv,md}
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

import factorch.layers.base as base
from common import write_results
from factorch.cli.main import run
from factorch.measure.results import environment

ARGS = "train --model lenet5 --dataset digits --epochs 10 --factorized-from-scratch --method tucker3,svd " \
       "--rank budget:params=0.3"
LRS, SEEDS = ("0.1", "0.05", "0.02"), range(6)


def final_accuracy(lr: str, seed: int, out: Path) -> float:
    """The run's final test accuracy in %, NaN when it stopped on a non-finite loss."""
    shutil.rmtree(out, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = run([*ARGS.split(), "--lr", lr, "--seed", str(seed), "--out", str(out)])
    if code:
        return float("nan")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return 100 * rows[-1]["test_acc"]


def main() -> None:
    torch.set_num_threads(1)
    balanced = base.FactorizedLayer.balance_
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for init, balance in (("balanced", balanced), ("unbalanced", lambda self: None)):
            base.FactorizedLayer.balance_ = balance
            for lr in LRS:
                accs = [final_accuracy(lr, seed, Path(tmp) / "run") for seed in SEEDS]
                finite = [a for a in accs if a == a]
                rows.append({"init": init, "lr": float(lr), "diverged": len(accs) - len(finite),
                             "mean_acc": statistics.mean(finite) if finite else None,
                             "accs": " ".join("nan" if a != a else f"{a:.1f}" for a in accs)})
    base.FactorizedLayer.balance_ = balanced
    write_results("from_scratch_stability", rows, environment("cpu"), notes=[
        f"command per run: factorch {ARGS} --lr LR --seed S (seeds {SEEDS.start}-{SEEDS.stop - 1}); final test "
        "accuracy in %, nan: stopped on a NaN/inf loss",
        "mean_acc: over the runs that did not diverge"])


if __name__ == "__main__":
    main()
