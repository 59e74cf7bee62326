"""Parameters and MACs per layer, counted by forward hooks on the real modules.

MACs (multiply-accumulates; FLOPs = 2 MACs) are counted for ``nn.Conv2d`` and ``nn.Linear``, the
layers that decompositions change, from the shapes each one really sees, so stride, padding and the
input-resolution 1x1 of a factorized conv are all accounted for:

* Conv2d: ``H' W' * (C/g) * kh * kw * N`` per example (``docs/math.md``, "Counting multiply-adds");
* Linear: ``rows * C * N`` per example (rows = all leading dims but the batch);
* MultiheadAttention, counted whole (it reads its ``out_proj``'s weight instead of calling it, so
  that child never runs): its four projections plus ``Q K^T`` and ``A V`` (``attention_macs``).

Any other module may count itself: if it defines ``count_macs(*inputs, output) -> int`` (MACs for
the whole batch of that call, of the work its child modules do not do: all of it for a leaf), the
hook uses it (``TTLinear`` does: its contractions are not ``nn.Linear`` calls; a factorized
attention counts ``Q K^T`` and ``A V``, its factor linears count themselves). Normalisation,
activations and pooling are not counted (the same in dense and factorized models).
A factorized layer's MACs are its factor convs' MACs, e.g. Tucker-2:
``H W C R_in + H' W' kh kw R_in R_out + H' W' R_out N`` (Elhoushi et al. Eq. 11's denominator).
"""
from __future__ import annotations

import copy
import inspect
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


def attention_products(query_rows: int, keys: int, embed_dim: int) -> int:
    """``Q K^T`` and ``A V`` of multi-head attention for ``query_rows`` queries (over the batch),
    each against ``keys`` keys: ``query_rows * keys * d_head`` per head and product, ``H d_head = E``."""
    return 2 * query_rows * keys * embed_dim


def attention_keys(batch_first: bool, key: torch.Tensor, extra: int) -> int:
    """How many keys each query meets: the key sequence length (``key`` is ``(S, E_k)``, ``(S, N,
    E_k)`` or, ``batch_first``, ``(N, S, E_k)``), plus ``extra`` appended ones (``add_bias_kv``,
    ``add_zero_attn``)."""
    return int(key.shape[1] if batch_first and key.dim() == 3 else key.shape[0]) + extra


def attention_macs(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor) -> int:
    """A dense ``nn.MultiheadAttention`` call, whole batch: the projections of the ``N L`` queries
    (``E E`` each, in and out) and ``N S`` keys and values (``E kdim``, ``E vdim``) plus
    ``attention_products`` (``docs/math.md``, "Counting multiply-adds")."""
    e = module.embed_dim
    rows_q, rows_k = query.numel() // e, key.numel() // module.kdim
    extra = int(module.bias_k is not None) + int(module.add_zero_attn)
    return rows_q * 2 * e * e + rows_k * (module.kdim + module.vdim) * e + \
        attention_products(rows_q, attention_keys(module.batch_first, key, extra), e)


def _macs(module: nn.Module, args: tuple, out: torch.Tensor) -> int:
    """MACs of one call for the whole batch."""
    own = getattr(module, "count_macs", None)
    if callable(own) and args and isinstance(args[0], torch.Tensor):
        return int(own(*args, output=out))
    if isinstance(module, nn.MultiheadAttention):
        return attention_macs(module, args[0], args[1])
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def count(model: nn.Module, example_input: Any) -> Counts:
    """Count ``model``'s parameters and its MACs for ``example_input`` (a tensor, or a tuple of
    positional inputs whose first element carries the batch: its dimension 0, or 1 for a 3-D input
    to a model whose ``batch_first`` is False, torch's sequence layout), per example.

    Runs one forward pass in eval mode without gradients and restores every module's mode, so
    BatchNorm statistics are not touched. Works on the ``meta`` device (shapes only, no compute).
    """
    first = (example_input if isinstance(example_input, tuple) else (example_input,))[0]
    axis = 1 if getattr(model, "batch_first", True) is False and first.dim() == 3 else 0
    return _count(model, example_input, int(first.shape[axis]) if first.dim() > 0 else 1)


def _counted(module: nn.Module) -> bool:
    """Whether ``count`` hooks ``module``: a leaf, a module that counts itself, an attention."""
    return not any(True for _ in module.children()) or callable(getattr(module, "count_macs", None)) or \
        isinstance(module, nn.MultiheadAttention)


def _count(model: nn.Module, example_input: Any, batch: int) -> Counts:
    """``count`` with the MACs divided by ``batch``."""
    rows: list[LayerCount] = []

    def record(name: str, module: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            out = out[0]  # (output, attention weights)
        if not isinstance(out, torch.Tensor):
            return
        whole = isinstance(module, nn.MultiheadAttention)  # its children never run
        params = sum(p.numel() for p in module.parameters(recurse=whole))
        macs = _macs(module, args, out) // batch
        in_shape = tuple(args[0].shape[1:]) if args and isinstance(args[0], torch.Tensor) else ()
        rows.append(LayerCount(name, type(module).__name__, params, macs, in_shape, tuple(out.shape[1:])))

    counted = {name or type(m).__name__: m for name, m in model.named_modules() if _counted(m)}
    probe(model, example_input, counted, record)
    params = sum(p.numel() for p in model.parameters())
    rows = [r for r in rows if r.params or r.macs]
    return Counts(params=params, macs=sum(r.macs for r in rows), layers=rows)


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
