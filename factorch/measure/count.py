"""Parameters and MACs per module, counted on the real forward pass (``docs/math.md``, "Counting
multiply-adds").

MACs (multiply-accumulates; FLOPs = 2 MACs) are counted at the operator level
(``factorch.measure.operators``: every convolution of any dimensionality, plain or transposed,
every matrix product however it is spelled -- ``nn.Linear``, ``F.linear``, ``@``, ``bmm``,
``einsum`` -- and scaled-dot-product attention, fused paths included) from the shapes each
operator really sees, so stride, padding and the input-resolution 1x1 of a factorized conv are
all accounted for:

* conv: ``out_elements * (C/g) * prod(kernel)``; transposed conv ``in_elements * (N/g) * prod(kernel)``;
* linear / matmul: ``rows * C * N``; attention: ``L_q L_k (d + d_v)`` per head and example.

Each operator is attributed to the innermost module running it (an ``nn.MultiheadAttention`` row
holds its projections and attention products: it reads ``out_proj``'s weight without calling
it). A module may count itself instead: if it defines ``count_macs(input, output) -> int`` (MACs
for the whole batch of that call), that is used and the operators it runs are not counted again
(``TTLinear``, Tucker-3's ``SpatialCoreConv``). An operator that multiplies but has no formula
(``nn.LSTM``'s fused CPU cell, ``nn.Bilinear``'s ``_trilinear``) is never counted as 0 silently:
its module's row lists it in ``uncounted``, ``Counts.unattributed`` holds those rows, the printed
table says so and ``count`` warns. Normalisation, activations and pooling are not counted (the
same in dense and factorized models).
A factorized layer's MACs are its factor convs' MACs, e.g. Tucker-2:
``H W C R_in + H' W' kh kw R_in R_out + H' W' R_out N`` (Elhoushi et al. Eq. 11's denominator).
"""
from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from factorch.measure.operators import Frame, OperatorCounter


@dataclass(frozen=True)
class LayerCount:
    """One module call: its parameters, its MACs per example, its shapes (no batch). ``params``: the
    module's own parameters and those of its submodules that did not run (the weights it read
    itself, e.g. ``nn.MultiheadAttention``'s ``out_proj``). ``uncounted``: operators it ran that
    multiply but have no formula (its ``macs`` then miss them)."""

    name: str
    kind: str
    params: int
    macs: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    uncounted: tuple[str, ...] = ()


@dataclass
class Counts:
    """``params``: all distinct parameters of the model; ``macs``: per example, of every counted
    operator; ``layers``: one row per module call that holds parameters, MACs or uncounted operators."""

    params: int
    macs: int
    layers: list[LayerCount] = field(default_factory=list)

    @property
    def unattributed(self) -> list[LayerCount]:
        """The rows whose module ran multiplying operators no formula counts: ``macs`` is a lower
        bound while this is not empty."""
        return [r for r in self.layers if r.uncounted]

    def under(self, prefix: str) -> tuple[int, int]:
        """(params, MACs) of every counted layer whose name is ``prefix`` or starts with ``prefix.``."""
        rows = [r for r in self.layers if r.name == prefix or r.name.startswith(prefix + ".")]
        return sum(r.params for r in rows), sum(r.macs for r in rows)

    def __str__(self) -> str:
        width = max([len("layer")] + [len(r.name) for r in self.layers])
        lines = [f"{'layer':<{width}}  {'type':<14} {'params':>12} {'MACs':>14}  output"]
        for r in self.layers:
            out = "x".join(map(str, r.output_shape))
            macs = f"{r.macs:,}" + ("+?" if r.uncounted else "")
            lines.append(f"{r.name:<{width}}  {r.kind:<14} {r.params:>12,} {macs:>14}  {out}")
        total = f"{self.macs:,}" + ("+?" if self.unattributed else "")
        lines.append(f"{'total':<{width}}  {'':<14} {self.params:>12,} {total:>14}")
        lines += [f"not counted: {describe(r)}" for r in self.unattributed]
        return "\n".join(lines)


def describe(row: LayerCount) -> str:
    """``lstm (LSTM): aten.mkldnn_rnn_layer has no MAC formula``: an unattributed row, for messages."""
    return f"{row.name} ({row.kind}): {', '.join(row.uncounted)} {'has' if len(row.uncounted) == 1 else 'have'} " \
           "no MAC formula"


def attention_products(query_rows: int, keys: int, embed_dim: int) -> int:
    """``Q K^T`` and ``A V`` of multi-head attention for ``query_rows`` queries (over the batch),
    each against ``keys`` keys: ``query_rows * keys * d_head`` per head and product, ``H d_head = E``
    (what the scaled-dot-product operator's formula counts)."""
    return 2 * query_rows * keys * embed_dim


def count(model: nn.Module, example_input: Any) -> Counts:
    """Count ``model``'s parameters and its MACs for ``example_input`` (a tensor, or a tuple of
    positional inputs whose first element carries the batch: its dimension 0, or 1 for a 3-D input
    to a model whose ``batch_first`` is False, torch's sequence layout), per example.

    Runs one forward pass in eval mode without gradients and restores every module's mode, so
    BatchNorm statistics are not touched. Works on the ``meta`` device (shapes only, no compute).
    Multiplying operators without a formula are listed in ``Counts.unattributed`` and warned about.
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    # an attention counted on its own with batch_first=False takes (L, N, E): the batch is axis 1
    axis = 1 if getattr(model, "batch_first", True) is False and inputs[0].dim() == 3 else 0
    batch = int(inputs[0].shape[axis]) if inputs[0].dim() > 0 else 1
    counter = OperatorCounter()
    calls: list[tuple[str, nn.Module, Frame, tuple, tuple]] = []
    names = {m: name or type(m).__name__ for name, m in model.named_modules()}

    def enter(module: nn.Module, args: tuple) -> None:
        parent = counter.frames[-1].own if counter.frames else False
        counter.frames.append(Frame(own=parent or callable(getattr(module, "count_macs", None))))

    def record(name: str, module: nn.Module, args: tuple, out: Any) -> None:
        frame = counter.frames.pop()
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        own = getattr(module, "count_macs", None)
        if callable(own) and first is not None and not (counter.frames and counter.frames[-1].own):
            frame.macs = int(own(first, out))
        calls.append((name, module, frame, tuple(first.shape[1:]) if first is not None else (), _shape(out)))

    pre = [m.register_forward_pre_hook(enter) for m in names]
    try:
        with counter:
            probe(model, example_input, {n: m for m, n in names.items()}, record)
    finally:
        for h in pre:
            h.remove()
    carried = _weights_read(model, {m for _, m, _, _, _ in calls})
    rows = []
    for name, module, frame, in_shape, out_shape in calls:
        params = sum(p.numel() for p in module.parameters(recurse=False)) + carried.get(module, 0)
        row = LayerCount(name, type(module).__name__, params, frame.macs // batch, in_shape, out_shape,
                         tuple(sorted(frame.uncounted)))
        if row.params or row.macs or row.uncounted:
            rows.append(row)
    counts = Counts(params=sum(p.numel() for p in model.parameters()), macs=sum(r.macs for r in rows), layers=rows)
    if counts.unattributed:
        warnings.warn("fc.count: MACs not counted (no formula), the total is a lower bound: "
                      + "; ".join(describe(r) for r in counts.unattributed), stacklevel=2)
    return counts


def _shape(out: Any) -> tuple[int, ...]:
    """The shape (no batch) of a module's output, or of the first tensor of a tuple output."""
    if isinstance(out, (tuple, list)):
        out = next((t for t in out if isinstance(t, torch.Tensor)), None)
    return tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()


def _weights_read(model: nn.Module, ran: set[nn.Module]) -> dict[nn.Module, int]:
    """Per module that ran, the parameters of its submodules that did not run themselves (their
    nearest running ancestor read their weights, e.g. ``nn.MultiheadAttention``'s ``out_proj``)."""
    carried: dict[nn.Module, int] = {}

    def visit(module: nn.Module, owner: nn.Module | None) -> None:
        for child in module.children():
            if child in ran:
                visit(child, child)
                continue
            own = sum(p.numel() for p in child.parameters(recurse=False))
            if owner is not None and own:
                carried[owner] = carried.get(owner, 0) + own
            visit(child, owner)

    visit(model, model if model in ran else None)
    return carried


def layer_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of ``module`` for one example of ``input_shape`` (no batch dim; ``example_shape``: an
    attention's is ``(L_q, L_k)``), costed on the ``meta`` device: nothing is computed and
    ``module`` is not touched."""
    meta = module if _on_meta(module) else _meta_copy(module)
    ref = next(meta.parameters(), None)
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    if isinstance(module, nn.MultiheadAttention):
        (lq, lk), e = input_shape, module.embed_dim
        shape = (lambda n, d: (1, n, d)) if module.batch_first else (lambda n, d: (n, 1, d))
        example = tuple(torch.empty(shape(n, d), device="meta", dtype=dtype)
                        for n, d in ((lq, e), (lk, module.kdim), (lk, module.vdim)))
        return count(meta, example).macs
    return count(meta, torch.empty((1, *input_shape), device="meta", dtype=dtype)).macs


def example_shape(module: nn.Module, args: tuple) -> tuple[int, ...]:
    """One example's input shape as ``layer_macs`` and the rank spaces take it, from a call's
    positional ``args``: the first input without its batch dimension; for an attention (its query,
    key and value first), ``(L_q, L_k)``, the query and key sequence lengths."""
    if isinstance(module, nn.MultiheadAttention):
        query, key = args[0], args[1]
        time = 1 if module.batch_first and query.dim() == 3 else 0
        return (int(query.shape[time]), int(key.shape[time]))
    return tuple(args[0].shape[1:])


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
    each of ``modules`` runs; returns the model's output. ``args`` are the call's arguments in
    the order of the module's ``forward`` (keyword arguments bound to their places and the
    defaults filled in when any keyword was given: an attention called as
    ``attn(x, x, x, need_weights=False)`` gets all eight). A ``record`` that returns a value
    replaces that module's output with it for the rest of the pass (the data-aware check runs the
    model with one layer's factors in place this way); None leaves it unchanged. torch's fused
    attention kernels (the ``torch.backends.mha`` fast path) are off for the pass: they read the
    layers' weights without calling them, and a factorized layer turns them off for good
    (``factorch.fused``), so the pass takes the path the modules' own forwards take. Restores every
    module's mode and removes the hooks, so BatchNorm statistics and the model are left as they were."""

    def hook(name: str):
        def call(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            return record(name, module, _positional(module, args, kwargs), out)
        return call

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    hooks = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in modules.items()]
    modes = {m: m.training for m in model.modules()}
    fused = torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad():
            return model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fused)
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode


def _positional(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """``args`` with ``kwargs`` bound to their places in ``module.forward``'s signature, every
    default filled in; ``args`` itself when no keywords were given (keyword-only arguments of a
    forward are not passed on)."""
    if not kwargs:
        return args
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return args
    bound.apply_defaults()
    return bound.args
