"""Parameters and MACs per layer, counted by forward hooks on the real modules.

MACs (multiply-accumulates; FLOPs = 2 MACs) are counted for ``nn.Conv2d`` and ``nn.Linear``, the
layers that decompositions change, from the shapes each one really sees, so stride, padding and the
input-resolution 1x1 of a factorized conv are all accounted for:

* Conv2d: ``H' W' * (C/g) * kh * kw * N`` per example (``docs/math.md``, "Counting multiply-adds");
* Linear: ``rows * C * N`` per example (rows = all leading dims but the batch).

Any other leaf module may count itself: if it defines ``count_macs(input, output) -> int`` (MACs for
the whole batch of that call), the hook uses it (``TTLinear`` does: its contractions are not
``nn.Linear`` calls). Normalisation, activations and pooling are not counted (the same in dense and
factorized models).
A factorized layer's MACs are its factor convs' MACs, e.g. Tucker-2:
``H W C R_in + H' W' kh kw R_in R_out + H' W' R_out N`` (Elhoushi et al. Eq. 11's denominator).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class LayerCount:
    """One leaf module: its own parameters and its MACs per example."""

    name: str
    kind: str
    params: int
    macs: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


@dataclass
class Counts:
    """``params``: all distinct parameters of the model; ``macs``: per example; ``layers``: rows."""

    params: int
    macs: int
    layers: list[LayerCount] = field(default_factory=list)

    def under(self, prefix: str) -> tuple[int, int]:
        """(params, MACs) of every counted layer whose name is ``prefix`` or starts with ``prefix.``."""
        rows = [r for r in self.layers if r.name == prefix or r.name.startswith(prefix + ".")]
        return sum(r.params for r in rows), sum(r.macs for r in rows)

    def __str__(self) -> str:
        width = max([len("layer")] + [len(r.name) for r in self.layers])
        lines = [f"{'layer':<{width}}  {'type':<14} {'params':>12} {'MACs':>14}  output"]
        for r in self.layers:
            out = "x".join(map(str, r.output_shape))
            lines.append(f"{r.name:<{width}}  {r.kind:<14} {r.params:>12,} {r.macs:>14,}  {out}")
        lines.append(f"{'total':<{width}}  {'':<14} {self.params:>12,} {self.macs:>14,}")
        return "\n".join(lines)


def _macs(module: nn.Module, args: tuple, out: torch.Tensor) -> int:
    """MACs of one call for the whole batch."""
    own = getattr(module, "count_macs", None)
    if callable(own) and args and isinstance(args[0], torch.Tensor):
        return int(own(args[0], out))
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def count(model: nn.Module, example_input: Any) -> Counts:
    """Count ``model``'s parameters and its MACs for ``example_input`` (a tensor, or a tuple of
    positional inputs whose first element carries the batch), per example.

    Runs one forward pass in eval mode without gradients and restores every module's mode, so
    BatchNorm statistics are not touched. Works on the ``meta`` device (shapes only, no compute).
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    batch = int(inputs[0].shape[0]) if inputs[0].dim() > 0 else 1
    rows: list[LayerCount] = []

    def record(name: str, module: nn.Module, args: tuple, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            return
        params = sum(p.numel() for p in module.parameters(recurse=False))
        macs = _macs(module, args, out) // batch
        in_shape = tuple(args[0].shape[1:]) if args and isinstance(args[0], torch.Tensor) else ()
        rows.append(LayerCount(name, type(module).__name__, params, macs, in_shape, tuple(out.shape[1:])))

    leaves = {name or type(m).__name__: m for name, m in model.named_modules() if not any(True for _ in m.children())}
    probe(model, example_input, leaves, record)
    params = sum(p.numel() for p in model.parameters())
    rows = [r for r in rows if r.params or r.macs]
    return Counts(params=params, macs=sum(r.macs for r in rows), layers=rows)


def layer_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of ``module`` for one example of ``input_shape`` (no batch dim), costed on the ``meta``
    device: nothing is computed and ``module`` is not touched."""
    meta = module if _on_meta(module) else _meta_copy(module)
    ref = next(meta.parameters(), None)
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    return count(meta, torch.empty((1, *input_shape), device="meta", dtype=dtype)).macs


def _meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers live on ``meta``: the weights' data is
    never copied (a deepcopy of a 512x512x3x3 conv first copies its 9 MB)."""
    memo: dict[int, Any] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(module, memo)


def _on_meta(module: nn.Module) -> bool:
    tensors = list(module.parameters()) + list(module.buffers())
    return bool(tensors) and all(t.is_meta for t in tensors)


def probe(model: nn.Module, example_input: Any, modules: dict[str, nn.Module],
          record: Callable[[str, nn.Module, tuple, Any], Any]) -> Any:
    """One forward pass of ``model`` on ``example_input`` (a tensor or a tuple of positional
    inputs) in eval mode without gradients, calling ``record(name, module, args, output)`` after
    each of ``modules`` runs; returns the model's output. A ``record`` that returns a value
    replaces that module's output with it for the rest of the pass (the data-aware check runs the
    model with one layer's factors in place this way); None leaves it unchanged. Restores every
    module's mode and removes the hooks, so BatchNorm statistics and the model are left as they were."""

    def hook(name: str):
        def call(module: nn.Module, args: tuple, out: Any) -> Any:
            return record(name, module, args, out)
        return call

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    hooks = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            return model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
