"""Calibration batches: what a user passes as ``calibration=`` and how it is split.

``fc.decompose_(model, method, calibration=[x1, x2, ...])`` (or ``calibration=fc.Calibration(...)``)
fits the factors to the outputs each layer produces on these inputs instead of to its weights
(``factorch.calibration.statistics``); the last quarter of the batches is held out to check
those factors against weight-only ones (``factorch.calibration.safety``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

DAMPING = 1e-4       # lambda of ``C + lambda mean(diag C) I``; grown where Cholesky needs more
MAX_CHANNELS = 8192  # larger inputs would need a >512 MB second moment per layer: weight-only factors
OUTPUTS = ("auto", "logits", "values")  # how the safety rule judges the model's output
HOW = ("give a list of input batches (tensors, or (x, y) tuples whose y is ignored), e.g. "
       "[x for x, _ in itertools.islice(loader, 8)]")


@dataclass(frozen=True, eq=False)
class Calibration:
    """Data-aware decomposition settings.

    ``batches``: input tensors, or ``(x, y, ...)`` tuples/lists whose first item is the input (no
    labels are needed; the rest is ignored). The last quarter of the batches (at least one) is held
    out to check the data-aware factors against weight-only ones (``factorch.calibration.safety``); a single
    batch is split by samples the same way. ``damping``: the initial ``lambda`` of
    ``C + lambda mean(diag C) I``: larger values move data-aware factors towards weight-only ones.
    ``sequential`` (default True): fit each layer to the inputs the already decomposed layers before
    it produce (Zhang et al., TPAMI 2016); costs two forward passes over the fit batches per layer.
    ``False`` fits every layer to the dense model's inputs (one pass in all). On vgg7/Fashion-MNIST
    at 15 % of the MACs the sequential form kept 86.6 % test accuracy where the plain one kept
    58.7 % (``benchmarks/results/data_aware_fashion-mnist.md``). ``outputs``: how the held-out
    check judges the model's output: ``"logits"`` (top-1 agreement with the dense model's
    predictions, then the KL divergence of the softmax), ``"values"`` (relative output error, e.g.
    a regression head), ``"auto"`` (default): logits where the output is ``(batch, classes >= 2)``.
    """

    batches: Sequence[Any]
    damping: float = DAMPING
    sequential: bool = True
    outputs: str = "auto"

    def __post_init__(self) -> None:
        given = self.batches
        if isinstance(given, Tensor):
            given = [given]
        if not isinstance(given, (list, tuple)):
            raise ValueError(f"calibration takes a list of batches, got a {type(given).__name__}; {HOW}")
        if not given:
            raise ValueError(f"calibration is an empty list; {HOW}")
        inputs = []
        for i, batch in enumerate(given):
            x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
            if not isinstance(x, Tensor) or x.dim() < 1:
                raise ValueError(f"calibration batch {i} is a {type(batch).__name__}, not an input tensor "
                                 f"with a batch dimension; {HOW}")
            if x.is_meta:
                raise ValueError(f"calibration batch {i} is on the meta device: it holds no values; {HOW}")
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise ValueError(f"calibration batch {i} has NaN or Inf values")
            inputs.append(x)
        if len(inputs) == 1 and len(inputs[0]) < 2:
            raise ValueError("calibration needs at least 2 samples: a quarter of them (at least one) is held "
                             "out to check the data-aware factors")
        object.__setattr__(self, "batches", tuple(inputs))
        d = self.damping
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0 or math.isnan(d):
            raise ValueError(f"calibration damping must be a number in [0, 1), got {d!r}")
        if not isinstance(self.sequential, bool):
            raise ValueError(f"calibration sequential must be True or False, got {self.sequential!r}")
        if self.outputs not in OUTPUTS:
            raise ValueError(f"calibration outputs must be one of {', '.join(OUTPUTS)}, got {self.outputs!r}")

    def split(self) -> tuple[list[Tensor], list[Tensor]]:
        """``(fit, held_out)``: the last ``max(1, n // 4)`` of ``n >= 2`` batches are held out; a
        single batch of ``b`` samples is split the same way by samples."""
        batches = list(self.batches)
        if len(batches) == 1:
            (x,) = batches
            held = max(1, len(x) // 4)
            return [x[:len(x) - held]], [x[len(x) - held:]]
        held = max(1, len(batches) // 4)
        return batches[:-held], batches[-held:]

    def describe(self) -> str:
        fit, held = self.split()
        n = lambda bs: sum(len(b) for b in bs)  # noqa: E731
        seq = ", sequential" if self.sequential else ", plain (not sequential)"
        return (f"calibration: {len(fit)} batch(es) ({n(fit)} samples) fitted, {len(held)} ({n(held)}) held out"
                f"{seq}; damping {self.damping:g}")


def as_calibration(value: Any) -> Optional[Calibration]:
    """``None``, a ``Calibration``, or the batches of one (see ``Calibration``)."""
    if value is None or isinstance(value, Calibration):
        return value
    return Calibration(value)
