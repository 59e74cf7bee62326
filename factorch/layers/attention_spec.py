"""The geometry of a dense ``nn.MultiheadAttention`` (Vaswani et al. 2017, "Attention Is All You
Need", section 3.2), kept by a factorized attention so it can rebuild it, and its projections'
weights read from one.

An attention layer's input shape, as rank spaces and ``factorch.measure.count.layer_macs`` take it,
is ``(L_q, L_k)``: the query and the key sequence lengths of one example
(``factorch.measure.count.example_shape``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from factorch.measure.count import attention_products


@dataclass(frozen=True)
class AttentionSpec:
    """Everything ``nn.MultiheadAttention`` takes except the weights; ``kdim``/``vdim`` are ints
    (``embed_dim`` when the dense layer was given None)."""

    embed_dim: int
    num_heads: int
    dropout: float = 0.0
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    kdim: Optional[int] = None
    vdim: Optional[int] = None
    batch_first: bool = False

    def __post_init__(self) -> None:
        e, h = self.embed_dim, self.num_heads
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (e, h)):
            raise ValueError(f"attention: embed_dim and num_heads must be positive ints, got {e!r}, {h!r}")
        if e % h:
            raise ValueError(f"attention: embed_dim {e} is not divisible by num_heads {h}")
        object.__setattr__(self, "kdim", int(self.kdim if self.kdim is not None else e))
        object.__setattr__(self, "vdim", int(self.vdim if self.vdim is not None else e))
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"attention: dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def of(cls, attention: nn.MultiheadAttention) -> "AttentionSpec":
        return cls(int(attention.embed_dim), int(attention.num_heads), float(attention.dropout),
                   attention.in_proj_bias is not None, attention.bias_k is not None, bool(attention.add_zero_attn),
                   int(attention.kdim), int(attention.vdim), bool(attention.batch_first))

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def same_dims(self) -> bool:
        """Keys and values have ``embed_dim`` features: the dense layer packs q, k, v in ``in_proj_weight``."""
        return self.kdim == self.embed_dim and self.vdim == self.embed_dim

    @property
    def extra_keys(self) -> int:
        """Keys appended to every sequence: ``bias_k`` (``add_bias_kv``) and a zero key (``add_zero_attn``)."""
        return int(self.add_bias_kv) + int(self.add_zero_attn)

    def projections(self) -> tuple[tuple[str, int, int], ...]:
        """``(name, in_features, out_features)`` of the q, k, v and output projections."""
        e = self.embed_dim
        return (("q", e, e), ("k", self.kdim, e), ("v", self.vdim, e), ("out", e, e))

    @property
    def bias_params(self) -> int:
        """Parameters besides the projection weights: ``in_proj_bias`` (3E) and ``out_proj.bias`` (E),
        ``bias_k`` and ``bias_v`` (E each)."""
        return 4 * self.embed_dim * int(self.bias) + 2 * self.embed_dim * int(self.add_bias_kv)

    def macs(self, shape: tuple[int, ...]) -> int:
        """The dense layer's MACs for one example of ``(L_q, L_k)``: projections ``L_q E E`` (q and
        out each), ``L_k E kdim``, ``L_k E vdim``, and ``Q K^T``, ``A V`` (``docs/math.md``,
        "Counting multiply-adds")."""
        lq, lk = shape
        e = self.embed_dim
        return lq * 2 * e * e + lk * (self.kdim + self.vdim) * e + attention_products(lq, lk + self.extra_keys, e)

    def make(self) -> nn.MultiheadAttention:
        """A new ``nn.MultiheadAttention`` with this geometry (default init)."""
        return nn.MultiheadAttention(self.embed_dim, self.num_heads, self.dropout, self.bias, self.add_bias_kv,
                                     self.add_zero_attn, self.kdim, self.vdim, self.batch_first)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def projection_weights(attention: nn.MultiheadAttention) -> list[Tensor]:
    """The q, k, v and output projection weights of a dense attention, each ``(out, in)``: views of
    its packed ``in_proj_weight`` (3E, E) or of its separate ``q/k/v_proj_weight``."""
    if attention.in_proj_weight is not None:
        return [*attention.in_proj_weight.chunk(3), attention.out_proj.weight]
    return [attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight, attention.out_proj.weight]


@torch.no_grad()
def fill_dense(attention: nn.MultiheadAttention, weights: list[Tensor], in_bias: Optional[Tensor],
               out_bias: Optional[Tensor], bias_k: Optional[Tensor], bias_v: Optional[Tensor]) -> None:
    """Copy the four projection weights (q, k, v, out; each ``(out, in)``) and the biases into a
    dense attention of the same geometry (cast to its dtype)."""
    targets = projection_weights(attention)
    for target, w in zip(targets, weights):
        target.copy_(w)
    for target, value in ((attention.in_proj_bias, in_bias), (attention.out_proj.bias, out_bias),
                          (attention.bias_k, bias_k), (attention.bias_v, bias_v)):
        if target is not None:
            target.copy_(value)
