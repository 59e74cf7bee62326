"""What compressing a trained model bought, in the terms of Yin et al. 2021's tables: the dense
model's accuracy and the compressed one's, the difference, the FLOPs and parameter reductions, and
the speed-up measured on this machine (inference at batch 1, a training step at the run's batch),
side by side in one process (``factorch.measure.latency.compare``: interleaved, warm-up, median).

``factorch compress`` is a training run (``training.run.train``) that starts from the trained
weights with a decomposition event (``Decompose(0)`` or ``ADMMPhase(K)``) and optionally
``Distill``; ``summarize`` then compares the run's final model with the dense model it started
from and ``write`` puts the table in the run directory.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from factorch.measure.count import count
from factorch.measure.latency import Profiler, compare
from factorch.measure.results import environment, markdown_table, write_csv, write_markdown
from factorch.training.loop import evaluate

# the speed-up columns' clock: one thread (steady on a shared machine), interleaved, medians
TIMING = Profiler(warmup=5, runs=30, threads=1)


@dataclass(frozen=True)
class Compression:
    """One compressed model against the dense one it came from; accuracies in [0, 1], speed-ups
    dense time / compressed time (> 1: faster)."""

    dense_acc: float
    acc: float
    best_acc: float
    dense_macs: int
    macs: int
    dense_params: int
    params: int
    speedup_inference: Optional[float]
    speedup_training: Optional[float]
    inference_batch: int
    training_batch: int

    @property
    def drop(self) -> float:
        """Compressed minus dense accuracy, in points (negative: a loss)."""
        return 100 * (self.acc - self.dense_acc)

    @property
    def flops_reduction(self) -> float:
        """The share of the dense model's FLOPs removed (Yin et al.'s "FLOPs reduction")."""
        return 1 - self.macs / self.dense_macs

    @property
    def params_reduction(self) -> float:
        return 1 - self.params / self.dense_params

    def line(self) -> str:
        """The summary line."""
        speed = "" if self.speedup_inference is None else (
            f"; measured here {self.speedup_inference:.2f}x faster inference (batch {self.inference_batch}), "
            f"{self.speedup_training:.2f}x faster training step (batch {self.training_batch})")
        return (f"dense {self.dense_acc:.2%} -> compressed {self.acc:.2%} ({self.drop:+.2f} points) at "
                f"{self.flops_reduction:.1%} fewer FLOPs and {self.params_reduction:.1%} fewer parameters{speed}")


def summarize(dense: nn.Module, compressed: nn.Module, test: DataLoader, example: torch.Tensor,
              history: Sequence[dict[str, Any]], training_batch: int, timing: Optional[Profiler] = TIMING,
              device: Optional[torch.device] = None) -> Compression:
    """``dense`` (the trained model the run started from) against ``compressed`` (its final model):
    test accuracies (the compressed one's also as the run logged it: ``history``), MACs and
    parameters for ``example`` (one input, batch 1), and with ``timing`` the two speed-ups."""
    dense_counts, counts = count(dense, example), count(compressed, example)
    inference = training = None
    if timing is not None:
        shape = tuple(example.shape[1:])
        fwd = compare({"dense": dense, "compressed": compressed}, shape, dataclasses.replace(timing, batch=1))
        step = compare({"dense": dense, "compressed": compressed}, shape,
                       dataclasses.replace(timing, batch=training_batch, backward=True))
        inference = fwd["dense"].forward / fwd["compressed"].forward
        training = step["dense"].forward_backward / step["compressed"].forward_backward
    return Compression(evaluate(dense, test, device), history[-1]["test_acc"], max(r["test_acc"] for r in history),
                       dense_counts.macs, counts.macs, dense_counts.params, counts.params, inference, training, 1,
                       training_batch)


COLUMNS = ["dense_acc", "acc", "best_acc", "drop_points", "flops_reduction", "params_reduction", "dense_macs", "macs",
           "dense_params", "params", "speedup_inference", "speedup_training", "inference_batch", "training_batch"]


def write(result: Compression, out: Path, title: str, settings: Sequence[str], command: Optional[str] = None,
          device: str = "cpu") -> tuple[Path, Path]:
    """``out/results.md`` (the table, the settings as bullets) and ``out/results.csv``."""
    row = {**dataclasses.asdict(result), "drop_points": result.drop, "flops_reduction": result.flops_reduction,
           "params_reduction": result.params_reduction}
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    speed = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
    table = markdown_table(
        ["Dense acc", "Compressed acc", "Difference", "FLOPs reduction", "Params reduction", "MACs",
         "Params", f"Speed-up inference (batch {result.inference_batch})",
         f"Speed-up training step (batch {result.training_batch})"],
        [[pct(result.dense_acc), pct(result.acc), f"{result.drop:+.2f}", pct(result.flops_reduction),
          pct(result.params_reduction), f"{result.dense_macs:,} -> {result.macs:,}",
          f"{result.dense_params:,} -> {result.params:,}", speed(result.speedup_inference),
          speed(result.speedup_training)]])
    timing = (f"speed-ups: dense time over compressed time, measured side by side in one process after the run "
              f"(interleaved, {TIMING.warmup} warm-up calls, median of {TIMING.runs}, {TIMING.threads} CPU thread)")
    env = environment(device, command=command)
    md = write_markdown(out / "results.md", title, env, table, extra=[*settings, timing])
    csv = write_csv(out / "results.csv", [row], columns=COLUMNS, digits=None)
    return md, csv
