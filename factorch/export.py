"""Export a model (decomposed or not) to ONNX, TorchScript or a ``torch.export`` program, verified.

``export(model, example_input, format, path)`` exports with a dynamic batch size, then loads the
exported bytes back and runs them on batch sizes other than the traced one, next to the eager
model; only when every output is within the tolerance is the file written (atomically, with the
umask's mode). Otherwise one ``ValueError`` says what differed, and nothing is written.

| format           | exported by                                  | checked with         | needs              |
|------------------|----------------------------------------------|----------------------|--------------------|
| onnx             | ``torch.onnx.export(dynamo=True)``           | onnxruntime (CPU)    | ``factorch[export]`` |
| torchscript      | ``torch.jit.script`` + ``torch.jit.save``    | ``torch.jit.load``   | -                  |
| exported-program | ``torch.export.export`` + ``torch.export.save`` | ``torch.export.load`` | -               |

Layers whose forward TorchScript cannot compile (``TTLinear``, ``TTConv2d``) are scripted as
traces of themselves (``layers.base.traced_for_script``). A ``TTLinear`` picks its contraction
order by the batch size; an exported graph has one order, the one the example's batch size takes
(it gives the same outputs at every batch size).

``fc.export`` is this module's ``export`` function; the module's other names are imported from it
(``from factorch.export import FORMATS``).
"""
from __future__ import annotations

import copy
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from factorch.exporters import batch_dynamic, missing, onnx_bytes, quiet
from factorch.files import atomic_write_bytes, check_writable
from factorch.layers.tt_linear import TTLinear

__all__ = ["FORMATS", "ExportResult", "export"]

Runner = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Format:
    """``serialize(model, x) -> bytes`` exports an eval-mode model traced at input ``x`` (batch
    dynamic); ``load(bytes, device) -> run(x)`` runs the exported model; ``needs``: the optional
    packages it imports (the ``factorch[export]`` extra)."""

    serialize: Callable[[nn.Module, Tensor], bytes]
    load: Callable[[bytes, torch.device], Runner]
    needs: tuple[str, ...] = ()


def _onnx_runner(data: bytes, device: torch.device) -> Runner:
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


def _torchscript_bytes(model: nn.Module, x: Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    return buffer.getvalue()


def _torchscript_runner(data: bytes, device: torch.device) -> Runner:
    return torch.jit.load(io.BytesIO(data), map_location=device)


def _program_bytes(model: nn.Module, x: Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=batch_dynamic()), buffer)
    return buffer.getvalue()


def _program_runner(data: bytes, device: torch.device) -> Runner:
    return torch.export.load(io.BytesIO(data)).module()


FORMATS: dict[str, Format] = {
    "onnx": Format(onnx_bytes, _onnx_runner, needs=("onnx", "onnxruntime", "onnxscript")),
    "torchscript": Format(_torchscript_bytes, _torchscript_runner),
    "exported-program": Format(_program_bytes, _program_runner),
}


@dataclass(frozen=True)
class ExportResult:
    """What was written and how closely it matches eager: the largest absolute difference and
    the largest difference relative to the output's largest magnitude, over ``batches``."""

    format: str
    path: Path
    size: int  # bytes
    batches: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float
    tolerance: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"wrote {self.path} ({self.format}, {self.size / 1024:.0f} KiB): outputs match eager at batch sizes "
                f"{', '.join(map(str, self.batches))} (max abs diff {self.max_abs_diff:.2g}, max rel diff "
                f"{self.max_rel_diff:.2g}; tolerance rtol {self.tolerance['rtol']:g}, atol {self.tolerance['atol']:g})")


def _check_extras(format: str, needs: tuple[str, ...]) -> None:
    absent = missing(needs)
    if absent:
        raise ValueError(f"{format} export needs {', '.join(absent)}, not installed here: "
                         "pip install 'factorch[export]'")


def _pin_routes(model: nn.Module, batch: int) -> None:
    """An exported graph has one contraction order per TTLinear: the one ``batch`` takes (a
    choice made on a symbolic batch size would stop torch.export)."""
    for module in model.modules():
        if isinstance(module, TTLinear) and module.order == "auto":
            module.order = module.route(batch)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def export(model: nn.Module, example_input: Tensor, format: str, path: str | os.PathLike, *,
           rtol: float = 1e-4, atol: float = 1e-6, seed: int = 0) -> ExportResult:
    """Export ``model`` (in eval mode, a copy: ``model`` is not changed) to ``path``, verified.

    ``example_input``: one float input with its batch dimension (the shape and dtype of what the
    model takes; its batch size picks TTLinear's contraction order). The export is traced at
    batch size ``max(2, B)`` with a dynamic batch dimension, then the exported model runs on
    seeded random inputs at batch sizes 1 and one more than traced, and must match eager:
    ``max |y - y_eager| <= atol + rtol * max |y_eager|``. Then the file is written atomically.
    Raises ``ValueError`` (one line) for an unknown format, a missing optional package, an
    export the exporter refuses, or outputs that differ; nothing is written then.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    for name, value in (("rtol", rtol), ("atol", atol)):  # a bad tolerance is no verdict on the export
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"export tolerance {name} must be a finite number >= 0, got {value!r}")
    if not isinstance(example_input, Tensor) or example_input.dim() < 1 or not example_input.is_floating_point():
        raise ValueError("example_input must be one floating-point tensor with a batch dimension, e.g. (1, 3, 32, 32)")
    fmt = FORMATS[format]
    target = check_writable(path)
    _check_extras(format, fmt.needs)
    model = copy.deepcopy(model).eval()
    _pin_routes(model, example_input.shape[0])
    traced = max(2, example_input.shape[0])  # a traced size-1 batch would be fixed to 1
    x = example_input.repeat(math.ceil(traced / example_input.shape[0]), *[1] * (example_input.dim() - 1))[:traced]
    try:
        with torch.no_grad():
            model(x)  # exports are verified on one tensor input: a model that takes more is refused here
    except (TypeError, RuntimeError, ValueError) as e:
        raise ValueError(f"{type(model).__name__} does not run on one input shaped like example_input "
                         f"{tuple(example_input.shape)} ({_first_line(e)}); export takes and verifies models with one "
                         "tensor input") from None
    try:
        with quiet():
            data = fmt.serialize(copy.deepcopy(model), x)  # scripting may swap submodules: a copy
            run = fmt.load(data, x.device)
    except Exception as e:  # the exporters raise many types; one line says which format refused
        raise ValueError(f"cannot export {type(model).__name__} to {format}: {_first_line(e)}") from None
    batches = (1, traced + 1)
    worst_abs = worst_rel = 0.0
    generator = torch.Generator().manual_seed(seed)
    for batch in batches:
        xb = torch.randn((batch, *x.shape[1:]), generator=generator, dtype=x.dtype).to(x.device)
        with torch.no_grad():
            expected = model(xb)
            with quiet():
                got = run(xb)
        if not isinstance(expected, Tensor) or not isinstance(got, Tensor):
            raise ValueError(f"export verifies models with one tensor output; {type(model).__name__} "
                             f"returned {type(expected).__name__}")
        expected, got = expected.detach().cpu(), got.detach().cpu()
        if got.shape != expected.shape:
            raise ValueError(f"the {format} export gives shape {tuple(got.shape)} at batch size {batch}, eager "
                             f"{tuple(expected.shape)}; nothing written")
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        diff = float((got.to(expected.dtype) - expected).abs().max()) if expected.numel() else 0.0
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / scale if scale else diff)
        if not diff <= atol + rtol * scale:  # also catches NaN
            raise ValueError(f"the {format} export does not match eager at batch size {batch}: max abs diff "
                             f"{diff:.3g} (outputs up to {scale:.3g}; tolerance {atol:g} + {rtol:g} x that); "
                             "nothing written")
    atomic_write_bytes(data, target)
    return ExportResult(format, target, len(data), batches, worst_abs, worst_rel, {"rtol": rtol, "atol": atol})
