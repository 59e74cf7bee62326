"""Multiply-adds counted at the operator level, attributed to the module that runs them.

``OperatorCounter`` is a ``TorchDispatchMode``: every aten operator a forward pass runs goes through
it, after autograd and the composite decompositions, so a ``q @ k.transpose(-2, -1)`` written in a
module's ``forward``, an ``F.linear`` on a weight the module reads from a child it never calls
(``nn.MultiheadAttention``'s ``out_proj``) and an ``einsum`` are all seen as the ``mm``/``bmm``/
``addmm``/``convolution`` they become. Each operator's MACs come from

* PyTorch's own formulas (``torch.utils.flop_counter.flop_registry``, the engine of
  ``FlopCounterMode``; FLOPs = 2 MACs): ``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``convolution``
  (plain and transposed, any dimensionality), the CUDA attention kernels;
* factorch's formulas (``FORMULAS``) for what that registry misses on a CPU build
  (``docs/math.md``, "Counting multiply-adds"): the CPU scaled-dot-product-attention kernel,
  the fused ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` fast paths taken in eval
  mode without gradients (``FlopCounterMode`` counts 0 for the latter, measured on torch 2.13 CPU),
  and ``mv``/``dot``/``addmv``/``addbmm``.

An operator that multiplies (its name matches ``MULTIPLYING``: convolutions, matrix products,
attention, recurrent cells, ...) but has no formula is not guessed at: it is recorded as
*uncounted* on the module that ran it, which ``factorch.measure.count`` reports (a row, a line of
the table and a warning), never as 0. Normalisation, activations, pooling, softmax and element-wise
arithmetic are not MACs by factorch's convention (``docs/math.md``, "Conventions").
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten
Formula = Callable[..., Optional[int]]  # (*args, out=..., **kwargs) -> MACs, None when it cannot tell

# operator names that do multiply-adds: one without a formula is reported as uncounted
MULTIPLYING = re.compile(r"conv|mm$|^mm|bmm|^dot$|^vdot$|^mv$|addmv|einsum|linear|attention|rnn|lstm|gru"
                         r"|transformer|cdist|tensordot|^addr$")


def _dense(*tensors: Any) -> bool:
    return all(isinstance(t, Tensor) and not t.is_nested for t in tensors)


def _sdpa(query: Tensor, key: Tensor, value: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> Optional[int]:
    """``Q K^T`` and ``softmax(.) V``: ``L_q L_k (d + d_v)`` per head and batch element, the query's
    leading dims being heads and batch (grouped-query attention shares keys, not the work)."""
    if not _dense(query, key, value):
        return None
    return math.prod(query.shape[:-1]) * key.shape[-2] * (query.shape[-1] + value.shape[-1])


def _native_mha(query: Tensor, key: Tensor, value: Tensor, embed_dim: int, num_head: int, qkv_weight: Tensor,
                qkv_bias: Tensor, proj_weight: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> Optional[int]:
    """``nn.MultiheadAttention``'s fused path, query (B, L, E), key/value (B, S, E): the input
    projections ``(L + 2 S) E^2``, attention ``2 L S E`` (all heads: ``H d_head = E``), the output
    projection ``L E^2``, per batch element."""
    if not _dense(query, key, value) or query.dim() != 3:
        return None
    b, l_q, e = query.shape
    l_k = key.shape[1]
    return b * ((l_q + 2 * l_k) * e * e + 2 * l_q * l_k * e + l_q * proj_weight.numel())


def _encoder_layer(src: Tensor, embed_dim: int, num_heads: int, qkv_weight: Tensor, qkv_bias: Tensor,
                   proj_weight: Tensor, proj_bias: Tensor, use_gelu: bool, norm_first: bool, eps: float,
                   norm_weight_1: Tensor, norm_bias_1: Tensor, norm_weight_2: Tensor, norm_bias_2: Tensor,
                   ffn_weight_1: Tensor, ffn_bias_1: Tensor, ffn_weight_2: Tensor, *args: Any, out: Any = None,
                   **kwargs: Any) -> Optional[int]:
    """``nn.TransformerEncoderLayer``'s fused path on ``src`` (B, L, E), per token: the QKV
    projection ``3 E^2``, attention ``2 L E``, the output projection ``E^2`` and the feed-forward
    ``2 E F``. A nested (padded-away) ``src`` has no dense shape: uncounted."""
    if not _dense(src) or src.dim() != 3:
        return None
    tokens, length = src.shape[0] * src.shape[1], src.shape[1]
    return tokens * (qkv_weight.numel() + 2 * length * src.shape[2] + proj_weight.numel() + ffn_weight_1.numel()
                     + ffn_weight_2.numel())


def _mv(matrix: Tensor, vector: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
    return matrix.numel()


def _addmv(bias: Tensor, matrix: Tensor, vector: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
    return matrix.numel()


def _dot(a: Tensor, b: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
    return a.numel()


def _addbmm(bias: Tensor, a: Tensor, b: Tensor, *args: Any, out: Any = None, **kwargs: Any) -> int:
    return a.numel() * b.shape[-1]


FORMULAS: dict[Any, Formula] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa,
    aten._native_multi_head_attention: _native_mha,
    aten._transformer_encoder_layer_fwd: _encoder_layer,
    aten.mv: _mv, aten.addmv: _addmv, aten.dot: _dot, aten.vdot: _dot, aten.addbmm: _addbmm,
}


def operator_macs(packet: Any, args: tuple, kwargs: dict, out: Any) -> Optional[int]:
    """MACs of one operator call, or None when neither registry has a formula for it, or the
    formula cannot tell (nested tensors, arguments it was not written for): then it is reported
    as uncounted, never taken as 0."""
    own = FORMULAS.get(packet)
    theirs = flop_registry.get(packet)
    try:
        if own is not None:
            return own(*args, out=out, **kwargs)
        if theirs is not None:
            return int(theirs(*args, **kwargs, out_val=out)) // 2
    except (AttributeError, IndexError, RuntimeError, TypeError, ValueError):
        return None
    return None


@dataclass
class Frame:
    """One module call under way: the MACs of the operators it ran itself (not inside a child
    module) and the multiplying operators nobody could count. ``own``: the module counts itself
    (``count_macs``), so operators under it are not counted again."""

    macs: int = 0
    uncounted: set[str] = field(default_factory=set)
    own: bool = False  # set on the module that counts itself and inherited by everything it calls


class OperatorCounter(TorchDispatchMode):
    """Counts every operator's MACs into the innermost ``Frame`` on ``frames`` (pushed and popped
    by module hooks, ``factorch.measure.count``: the model itself is the outermost frame); with no
    frame open they go to ``outside``."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.outside = Frame()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        frame = self.frames[-1] if self.frames else self.outside
        if frame.own:
            return out
        packet = func._overloadpacket
        macs = operator_macs(packet, args, kwargs, out)
        if macs is not None:
            frame.macs += macs
        elif packet in FORMULAS or packet in flop_registry or MULTIPLYING.search(packet.__name__):
            frame.uncounted.add(str(packet))  # "aten._trilinear"
        return out
