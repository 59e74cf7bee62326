"""torch's exporters, called quietly and with a dynamic batch dimension: the one place ONNX graphs
and exported programs are made, for ``fc.export`` (what is shipped) and for ONNX Runtime timing
(``factorch.measure.onnx_runtime``). Depends on torch only, so the timing code can use it without
importing the layers."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings

import torch
from torch import Tensor, nn


def missing(packages: tuple[str, ...]) -> list[str]:
    """The ones of ``packages`` not installed here (the ``factorch[export]`` extra)."""
    return [name for name in packages if importlib.util.find_spec(name) is None]


def batch_dynamic() -> tuple[dict[int, torch.export.Dim], ...]:
    """The model's one input has a dynamic dimension 0."""
    return ({0: torch.export.Dim("batch")},)


@contextlib.contextmanager
def quiet():
    """The exporters' progress prints, warnings and log lines are not ours to show."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def onnx_bytes(model: nn.Module, x: Tensor) -> bytes:
    """``model`` as an ONNX graph by the dynamo exporter, its batch dimension dynamic."""
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=batch_dynamic(), verbose=False)
    return program.model_proto.SerializeToString()
