"""ONNX Runtime as a timing runtime: ``fc.Profiler(runtime="onnxruntime")``.

A model deployed to ONNX Runtime runs what ORT's graph optimiser makes of it (fused conv +
activation, on x86 the blocked ``NCHWc`` layout where channel counts allow; ``docs/math.md``,
"Ranks in multiples of the channel block"), not what PyTorch runs: which form of a layer is
fastest, and how fast a rank is, must then be measured there. Each module timed is exported to an
in-memory ONNX graph at the timing input's shape and run in its own ``InferenceSession`` with the
profiler's threads (one intra-op pool, no inter-op parallelism), on the CPU, or CUDA where the
profiler's device is a GPU and ORT has its CUDA provider.

The export is for timing only: torch's TorchScript-based exporter (a fraction of a second per
layer) where it handles the module, otherwise the dynamo exporter ``fc.export`` uses; what is
shipped is always exported and verified by ``fc.export``.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

NEEDS = ("onnx", "onnxruntime")  # the packages ONNX Runtime timing needs (factorch.exporters.missing)


def onnx_bytes(module: nn.Module, x: Tensor) -> bytes:
    """``module`` (eval mode) as an ONNX graph for input ``x``: the TorchScript exporter, or the
    dynamo one where that fails."""
    from factorch.exporters import onnx_bytes as dynamo_bytes, quiet

    module = module.eval()
    with quiet(), torch.no_grad():
        try:
            buffer = io.BytesIO()
            torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["x"])
            return buffer.getvalue()
        except Exception:  # noqa: BLE001 -- any exporter failure: the other exporter decides
            return dynamo_bytes(module, x)


def session_call(module: nn.Module, x: Tensor, threads: Optional[int]) -> Callable[[], None]:
    """One call of ``module`` on ``x`` in an ONNX Runtime session (``threads`` intra-op threads,
    default torch's setting)."""
    return graph_call(onnx_bytes(module, x), x, threads)


def graph_call(graph: Union[bytes, str, Path], x: Tensor, threads: Optional[int]) -> Callable[[], None]:
    """One call of an ONNX graph (bytes or a file) on ``x`` in a session timed the way every
    variant is: ``threads`` intra-op threads, no inter-op pool, idle pool threads asleep; the
    CUDA provider where ``x`` is on a GPU and ORT has it."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # ORT's hardware notes are not ours to show
    # variants are timed interleaved, each in its own session: a pool thread left spinning after
    # its call would take a core from the next variant's call, so pool threads sleep when idle
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if x.device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = onnxruntime.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                           providers=providers)
    feed = {session.get_inputs()[0].name: x.detach().cpu().contiguous().numpy()}
    return lambda: session.run(None, feed)
