"""Merging adjacent factors of a factorized layer where one conv costs fewer MACs than two.

A Tucker-2, Tucker-3, CP or SVD layer is a chain of linear maps with nothing between them
(``CHAINS``: its factor modules in the order its forward applies them). Two adjacent factors
compose exactly into one conv when one of them is pointwise (a 1x1 conv with stride 1 and no
padding, or a linear layer):

* ``B`` pointwise after ``A``: ``A``'s geometry (kernel, stride, padding, dilation) with ``B``'s
  output channels, ``W[o, c] = sum_r B[o, r] A[r, c]``, bias ``B b_A + b_B``;
* ``A`` pointwise before ``B``: ``B``'s geometry with ``A``'s input channels, the same product;
  exact where ``A`` has no bias or ``B`` pads with no zeros (a bias of ``A`` on a zero-padded border
  would be lost): the factorized layers keep their bias on the last factor for this reason.

A pointwise map commutes with every padding mode (it maps each pixel alone), so this holds for
reflect and circular padding too. Two spatial factors (CP's vertical and horizontal convs) are not
merged with each other; the whole chain composed is the dense layer (``to_dense``).

**The rule** (costs from the MAC formulas: ``factorch.measure.count`` on the modules, at the
deployment input size; MACs grow linearly with the batch, so the choice holds at any batch): of
all the ways to cut the chain into runs of adjacent factors and merge each run into one conv, take
the one with the fewest MACs, and among equal MACs the fewest convs. E.g. a Tucker-2 3x3 conv
``C -> N`` at ranks ``(R_out, R_in)`` merges its first 1x1 into the core when
``9 C R_out <= C R_in + 9 R_in R_out`` per output pixel (stride 1), and an SVD chain whose rank
``R`` has ``R (C + N) >= C N`` is rebuilt dense (one conv). Kim et al. (2016) observed 1x1 convs to be
cache-inefficient; whether fewer, larger convs are also *faster* is measured afterwards
(``factorch.deploy.choose``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from factorch.layers.base import FactorizedLayer
from factorch.measure.count import _meta_copy, layer_macs

# class name -> its factor modules, in the order its forward applies them (a test checks each
# against the layer's output; a CP layer of fewer than 3 spatial axes lacks the first axis convs);
# a class not listed is never merged (tensor trains reshape between cores)
CHAINS: dict[str, tuple[str, ...]] = {
    "TuckerConv": ("first", "core", "last"),
    "Tucker3Conv": ("first", "core", "last"),
    "CPConv": ("first", "depth", "vertical", "horizontal", "last"),
    "SVDConv": ("first", "last"),
    "SVDLinear": ("first", "last"),
}


@dataclass(frozen=True)
class Merged:
    """A chain as deployed: ``modules`` applied in order; ``runs``: which factors each one merged
    (``("first", "core")``); ``macs``: per example, at the layer's input size."""

    modules: tuple[nn.Module, ...]
    runs: tuple[tuple[str, ...], ...]
    macs: int

    @property
    def label(self) -> str:
        """``first+core | last``."""
        return " | ".join("+".join(run) for run in self.runs)

    def module(self) -> nn.Module:
        return self.modules[0] if len(self.modules) == 1 else nn.Sequential(*self.modules)


def chain_of(layer: nn.Module) -> Optional[list[tuple[str, nn.Module]]]:
    """The factor modules of a known factorized layer, as plain convs/linears (a Tucker-3 core's
    kernel is built once, here, instead of at every call); None for any other module."""
    names = CHAINS.get(type(layer).__name__) if isinstance(layer, FactorizedLayer) else None
    if names is None:
        return None
    out = []
    for name in names:
        module = getattr(layer, name, None)
        if module is None:  # an axis conv of a CP layer with fewer spatial axes
            continue
        if not isinstance(module, (_ConvNd, nn.Linear)):
            module = _baked(module)
            if module is None:
                return None
        out.append((name, module))
    return out


def _baked(module: nn.Module) -> Optional[nn.Module]:
    """A factor whose kernel is rebuilt at each call (``kernel()`` in the kernel layout and a
    ``ConvSpec`` ``config``) as a plain conv holding that kernel."""
    kernel, spec = getattr(module, "kernel", None), getattr(module, "config", None)
    if not callable(kernel) or not hasattr(spec, "make"):
        return None
    with torch.no_grad():
        weight = spec.as_weight(kernel())  # the kernel layout (N, C/g, k...) as the conv holds it (transposed: C first)
        conv = spec.make(bias=False).to(device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
    return conv


def merge(layer: nn.Module, input_shape: tuple[int, ...]) -> Optional[Merged]:
    """The fewest-MACs merge of ``layer``'s chain (see the module docstring) at ``input_shape``
    (one example, no batch); None where ``layer`` has no known chain."""
    chain = chain_of(layer)
    if chain is None:
        return None
    names = [n for n, _ in chain]
    shapes = _input_shapes([m for _, m in chain], input_shape)
    k = len(chain)
    # best[i]: (MACs, modules, runs) realising factors 0..i-1
    best: list[Optional[tuple[int, list[nn.Module], list[tuple[str, ...]]]]] = [(0, [], [])] + [None] * k
    for i in range(1, k + 1):
        for j in range(i):
            if best[j] is None:
                continue
            run = _compose([m for _, m in chain[j:i]])
            if run is None:
                continue
            macs = best[j][0] + layer_macs(run, shapes[j])
            candidate = (macs, best[j][1] + [run], best[j][2] + [tuple(names[j:i])])
            if best[i] is None or (macs, len(candidate[1])) < (best[i][0], len(best[i][1])):
                best[i] = candidate
    macs, modules, runs = best[k]
    return Merged(tuple(modules), tuple(runs), macs)


def _input_shapes(modules: list[nn.Module], shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The input shape (no batch) of each module of a chain run on one example of ``shape``, on meta."""
    shapes, x = [], torch.empty((1, *shape), device="meta")
    for m in modules:
        shapes.append(tuple(x.shape[1:]))
        with torch.no_grad():
            x = _meta_copy(m)(x.to(dtype=next(m.parameters()).dtype))
    return shapes


def _compose(modules: list[nn.Module]) -> Optional[nn.Module]:
    """One module equal to applying ``modules`` in order, or None where no exact merge exists."""
    out = modules[0]
    for nxt in modules[1:]:
        out = _pair(out, nxt)
        if out is None:
            return None
    return out


def _pair(a: nn.Module, b: nn.Module) -> Optional[nn.Module]:
    if isinstance(a, nn.Linear) and isinstance(b, nn.Linear):
        merged = nn.Linear(a.in_features, b.out_features).to(device=a.weight.device, dtype=a.weight.dtype)
        w_a, w_b = _f64(a.weight), _f64(b.weight)
        _store(merged, w_b @ w_a, _bias(a, w_b, b))
        return merged
    if not (isinstance(a, _ConvNd) and isinstance(b, _ConvNd) and type(a) is type(b)) or a.transposed:
        return None
    if _pointwise(b):
        geometry, c_in, c_out = a, a.in_channels, b.out_channels
    elif _pointwise(a) and (a.bias is None or not _zero_padded(b)):
        geometry, c_in, c_out = b, a.in_channels, b.out_channels
    else:
        return None
    g_a, g_b = a.groups, b.groups
    if max(g_a, g_b) % min(g_a, g_b):
        return None
    groups = min(g_a, g_b)
    # dense (out, in) maps with the groups' zeros, composed: (N, R) @ (R, C, k...) or (N, R, k...) @ (R, C)
    w_a, w_b = _full(a), _full(b)
    if geometry is a:
        w = torch.einsum("nr,rc...->nc...", w_b.flatten(1), w_a)
    else:
        w = torch.einsum("nr...,rc->nc...", w_b, w_a.flatten(1))
    merged = type(a)(c_in, c_out, geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation,
                     groups, True, geometry.padding_mode).to(device=a.weight.device, dtype=a.weight.dtype)
    _store(merged, _grouped(w, groups), _bias(a, w_b.flatten(2).sum(-1), b))
    return merged


def _pointwise(conv: _ConvNd) -> bool:
    """A 1x1 conv with stride 1 and no padding: a per-pixel linear map."""
    return all(k == 1 for k in conv.kernel_size) and all(s == 1 for s in conv.stride) and not _padded(conv)


def _padded(conv: _ConvNd) -> bool:
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def _zero_padded(conv: _ConvNd) -> bool:
    return _padded(conv) and conv.padding_mode == "zeros"


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


def _full(conv: _ConvNd) -> Tensor:
    """The conv's weight as one (out, in, k...) map, zero between groups, float64."""
    w, g = _f64(conv.weight), conv.groups
    if g == 1:
        return w
    n, c = conv.out_channels // g, conv.in_channels // g
    full = w.new_zeros((conv.out_channels, conv.in_channels, *w.shape[2:]))
    for i in range(g):
        full[i * n:(i + 1) * n, i * c:(i + 1) * c] = w[i * n:(i + 1) * n]
    return full


def _grouped(full: Tensor, groups: int) -> Tensor:
    """(out, in, k...) with zeros between ``groups`` blocks -> the grouped weight (out, in/g, k...)."""
    if groups == 1:
        return full
    n, c = full.shape[0] // groups, full.shape[1] // groups
    return torch.cat([full[i * n:(i + 1) * n, i * c:(i + 1) * c] for i in range(groups)])


def _bias(a: nn.Module, w_b: Tensor, b: nn.Module) -> Tensor:
    """``B b_A + b_B`` (``w_b``: B's (out, in) map summed over its kernel), float64."""
    out = w_b @ _f64(a.bias) if a.bias is not None else w_b.new_zeros(w_b.shape[0])
    return out + _f64(b.bias) if b.bias is not None else out


@torch.no_grad()
def _store(module: nn.Module, weight: Tensor, bias: Tensor) -> None:
    module.weight.copy_(weight.reshape(module.weight.shape))
    module.bias.copy_(bias)


def chain_macs(chain: list[tuple[str, nn.Module]], input_shape: tuple[int, ...]) -> int:
    """MACs of the unmerged chain at ``input_shape`` (one example)."""
    shapes = _input_shapes([m for _, m in chain], input_shape)
    return sum(layer_macs(m, s) for (_, m), s in zip(chain, shapes))


__all__ = ["CHAINS", "Merged", "chain_macs", "chain_of", "merge"]
