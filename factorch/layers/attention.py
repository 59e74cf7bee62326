"""Multi-head attention with truncated-SVD projections: ``SVDMultiheadAttention``.

``nn.MultiheadAttention`` (Vaswani et al. 2017, "Attention Is All You Need", section 3.2) projects
the queries, keys and values (``W_q`` (E, E), ``W_k`` (E, kdim), ``W_v`` (E, vdim)), attends per
head and projects the result (``W_o`` (E, E)). Each projection here is a rank-``R`` pair
``W ~= A B`` (``docs/math.md``, "Truncated SVD"), an ``SVDLinear`` without bias; the biases stay as
they are (``in_proj_bias``, packed q|k|v as in the dense layer, and the output projection's).
The attention between the projections is the dense layer's, operation for operation:
``F.scaled_dot_product_attention``, or, when the attention weights are asked for, the explicit
``softmax(Q K^T / sqrt(d) + mask) V`` whose weights it returns; dropout on the weights in training
mode as the dense layer applies it. At full ranks the layer equals the dense one
(tests/layers/test_attention.py, fp64 1e-10): ``batch_first`` or not, unbatched inputs,
``key_padding_mask``, ``attn_mask`` (bool or float), ``need_weights``, ``average_attn_weights``,
``is_causal``, ``add_bias_kv``, ``add_zero_attn`` and ``kdim``/``vdim`` other than ``embed_dim``.

Ranks: one per projection, modes ``(q, k, v, out)`` (an int is every one's), each at most
``min(in, out)`` of its weight; rules and budgets read each weight's own spectrum, and a
``Tolerance(eps)`` keeps every projection within ``eps`` of its weight, so the stacked kernel too.
Costs: the projections' (``R (in + out)`` weights, ``rows R (in + out)`` MACs); ``Q K^T`` and
``A V`` cost the same dense and factorized and are counted for both.

Calibration: weight-only. The q, k and v projections see the query, key and value inputs and the
output projection the attention output, four input statistics per layer where the data-aware path
(``factorch.calibration``) has one input factor per layer; the report notes it.

torch's ``nn.TransformerEncoderLayer`` hands a dense attention's packed weights to a fused kernel in
eval mode; it reads ``in_proj_bias`` and ``_qkv_same_embed_dim`` of its ``self_attn`` first, and
this layer, which holds no packed in-projection, says False to the latter, so the layer runs its
regular path (``factorch.fused`` turns the fused path of the modules around a factorized layer off).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorch.decompositions.svd import balanced_svd
from factorch.layers.attention_spec import AttentionSpec, fill_dense, projection_weights
from factorch.layers.base import FactorizedLayer, as_float64, check_finite, default_variance, init_uniform_
from factorch.layers.svd import SVDLinear
from factorch.measure.count import attention_products
from factorch.rank import Mode, RankSpace
from factorch.rank.space import Ranks

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


class SVDMultiheadAttention(FactorizedLayer):
    """``nn.MultiheadAttention`` with ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` as rank-R
    ``SVDLinear`` pairs (no bias); ``in_proj_bias`` (3E), ``out_proj``'s bias, ``bias_k``, ``bias_v``
    as in the dense layer. ``rank``: ``(R_q, R_k, R_v, R_out)`` or one int for all four. Takes and
    returns what ``nn.MultiheadAttention`` does: ``forward(query, key, value, ...) -> (output,
    weights or None)``."""

    _qkv_same_embed_dim = False  # no packed in-projection weight: torch's fused kernels do not apply

    def __init__(self, embed_dim: int, num_heads: int, rank: int | tuple[int, int, int, int], dropout: float = 0.0,
                 bias: bool = True, add_bias_kv: bool = False, add_zero_attn: bool = False,
                 kdim: Optional[int] = None, vdim: Optional[int] = None, batch_first: bool = False) -> None:
        super().__init__()
        self.config = spec = AttentionSpec(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim,
                                           vdim, batch_first)
        ranks = self.space(spec).check(rank)
        self.embed_dim, self.num_heads, self.head_dim = spec.embed_dim, spec.num_heads, spec.head_dim
        self.kdim, self.vdim, self.batch_first = spec.kdim, spec.vdim, spec.batch_first
        self.dropout, self.add_zero_attn = spec.dropout, spec.add_zero_attn
        (_, c_q, n_q), (_, c_k, n_k), (_, c_v, n_v), (_, c_o, n_o) = spec.projections()
        self.q_proj = SVDLinear(c_q, n_q, ranks[0], bias=False)
        self.k_proj = SVDLinear(c_k, n_k, ranks[1], bias=False)
        self.v_proj = SVDLinear(c_v, n_v, ranks[2], bias=False)
        self.out_proj = SVDLinear(c_o, n_o, ranks[3], bias=spec.bias)
        e = spec.embed_dim
        self.in_proj_bias = nn.Parameter(torch.empty(3 * e)) if spec.bias else None
        self.bias_k = nn.Parameter(torch.empty(1, 1, e)) if spec.add_bias_kv else None
        self.bias_v = nn.Parameter(torch.empty(1, 1, e)) if spec.add_bias_kv else None
        self.reset_parameters()

    # ---- from scratch ---------------------------------------------------------------------------

    def init_factors(self) -> None:
        """Each projection's kernel gets the variance of ``nn.MultiheadAttention``'s init: Xavier
        over the packed ``(3E, E)`` in-projection, ``1 / (2E)`` (separate q, k, v weights when
        ``kdim``/``vdim`` differ: ``2 / (E + in)`` each), the output projection PyTorch's
        ``nn.Linear`` default ``1 / (3E)``; biases 0 and ``bias_k``/``bias_v`` Xavier-normal, as
        there. Per pair (zero-mean uniform factors): ``Var B = 1/C``, ``Var A = v C / R``."""
        e = self.embed_dim
        for name, (_, c, n) in zip(PROJECTIONS[:3], self.config.projections()):
            _fill(getattr(self, name), 1.0 / (2 * e) if self.config.same_dims else 2.0 / (c + n))
        _fill(self.out_proj, default_variance(e))
        with torch.no_grad():
            for b in (self.in_proj_bias, self.out_proj.last.bias):
                if b is not None:
                    b.zero_()
            for b in (self.bias_k, self.bias_v):
                if b is not None:
                    nn.init.xavier_normal_(b)

    @torch.no_grad()
    def balance_(self) -> None:
        """Balance each projection's pair on its own (``SVDLinear.balance_``): a rescaling across
        pairs would change the kernel."""
        for name in PROJECTIONS:
            getattr(self, name).balance_()

    # ---- forward --------------------------------------------------------------------------------

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """``nn.MultiheadAttention.forward``: query (N, L, E) with ``batch_first``, else (L, N, E),
        or unbatched (L, E); key (.., S, kdim), value (.., S, vdim) alike. Returns the output shaped
        like the query and, with ``need_weights``, the attention weights (N, L, S) averaged over the
        heads or (N, H, L, S); (L, S)/(H, L, S) unbatched."""
        is_batched = query.dim() == 3
        if self.batch_first and is_batched:
            query, key, value = query.transpose(1, 0), key.transpose(1, 0), value.transpose(1, 0)
        if not is_batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz, embed_dim = query.shape  # (L, N, E)
        if embed_dim != self.embed_dim:
            raise ValueError("SVDMultiheadAttention: the query's last dimension is not embed_dim")
        key_padding_mask = _float_mask(key_padding_mask, query.dtype)
        if is_causal and attn_mask is None:
            raise ValueError("SVDMultiheadAttention: is_causal is a hint that attn_mask is causal; give the mask")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # scaled_dot_product_attention applies the causal mask itself
        else:
            attn_mask = _float_mask(attn_mask, query.dtype)
            if key_padding_mask is not None:
                is_causal = False  # the merged mask is no longer causal
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)  # (L, N, E), (S, N, E), (S, N, E)
        if self.in_proj_bias is not None:
            biases = self.in_proj_bias.chunk(3)
            q, k, v = q + biases[0], k + biases[1], v + biases[2]
        if attn_mask is not None and attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)  # (1, L, S); a 3-D mask is (N H, L, S)
        bias_k, bias_v = self.bias_k, self.bias_v
        if bias_k is not None and bias_v is not None:
            k = torch.cat([k, bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, bias_v.repeat(1, bsz, 1)])
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        heads, d = self.num_heads, self.head_dim
        q = q.reshape(tgt_len, bsz * heads, d).transpose(0, 1)       # (N H, L, d)
        k = k.reshape(k.shape[0], bsz * heads, d).transpose(0, 1)    # (N H, S, d)
        v = v.reshape(v.shape[0], bsz * heads, d).transpose(0, 1)    # (N H, S, d)
        if self.add_zero_attn:
            zeros = torch.zeros((bsz * heads, 1, d), dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        src_len = k.shape[1]
        if key_padding_mask is not None:
            padding = key_padding_mask.reshape(bsz, 1, 1, src_len).expand(-1, heads, -1, -1)
            padding = padding.reshape(bsz * heads, 1, src_len)
            attn_mask = padding if attn_mask is None else attn_mask + padding
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q * math.sqrt(1.0 / float(d))
            if attn_mask is not None:
                scores = torch.baddbmm(attn_mask, scores, k.transpose(-2, -1))  # (N H, L, S)
            else:
                scores = torch.bmm(scores, k.transpose(-2, -1))
            weights = F.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
            out = self.out_proj(out).reshape(tgt_len, bsz, embed_dim)
            weights = weights.reshape(bsz, heads, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not is_batched:
                out, weights = out.squeeze(1), weights.squeeze(0)
            returned: Optional[Tensor] = weights
        else:
            if attn_mask is not None:
                if attn_mask.shape[0] == 1 and attn_mask.dim() == 3:
                    attn_mask = attn_mask.unsqueeze(0)  # (1, 1, L, S)
                else:
                    attn_mask = attn_mask.reshape(bsz, heads, -1, src_len)
            out = F.scaled_dot_product_attention(q.reshape(bsz, heads, tgt_len, d), k.reshape(bsz, heads, src_len, d),
                                                 v.reshape(bsz, heads, src_len, d), attn_mask, dropout_p, is_causal)
            out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
            out = self.out_proj(out).reshape(tgt_len, bsz, embed_dim)
            if not is_batched:
                out = out.squeeze(1)
            returned = None
        if self.batch_first and is_batched:
            out = out.transpose(1, 0)
        return out, returned

    # ---- structure ------------------------------------------------------------------------------

    @property
    def ranks(self) -> tuple[int, int, int, int]:
        return (self.q_proj.rank, self.k_proj.rank, self.v_proj.rank, self.out_proj.rank)

    @classmethod
    def dense_config(cls, attention: nn.MultiheadAttention) -> AttentionSpec:
        return AttentionSpec.of(attention)

    @classmethod
    def space(cls, spec: AttentionSpec) -> RankSpace:
        """Modes ``(q, k, v, out)``, full ``min(in, out)`` each; params ``sum R (in + out)``; MACs at
        ``(L_q, L_k)``: ``L_q R_q 2E + L_k R_k (kdim + E) + L_k R_v (vdim + E) + L_q R_out 2E`` plus
        ``Q K^T`` and ``A V``. Each projection is a matrix: its squared error is its discarded
        energy, and the four add up (one error mode per projection's own spectrum)."""
        proj = spec.projections()

        def macs(ranks: Ranks, shape: tuple[int, ...]) -> int:
            lq, lk = shape
            rows = (lq, lk, lk, lq)
            return sum(n * r * (c + o) for n, r, (_, c, o) in zip(rows, ranks, proj)) + \
                attention_products(lq, lk + spec.extra_keys, spec.embed_dim)

        return RankSpace("SVDMultiheadAttention", tuple(Mode(name, min(c, o)) for name, c, o in proj),
                         params=lambda ranks: sum(r * (c + o) for r, (_, c, o) in zip(ranks, proj)),
                         macs=macs, dense_params=sum(c * o for _, c, o in proj), dense_macs=spec.macs,
                         bias=spec.bias_params)

    @classmethod
    def operands(cls, attention: nn.MultiheadAttention) -> list[Tensor]:
        """The q, k, v and output projection weights, ``(out, in)`` each, float64."""
        return [as_float64(w) for w in projection_weights(attention)]

    @classmethod
    def rank_space(cls, attention: nn.MultiheadAttention) -> RankSpace:
        """``space`` with the spectra of the four weights: one group, one mode per weight."""
        space = cls.space(cls.dense_config(attention))
        space.unfoldings = lambda: [[[w] for w in cls.operands(attention)]]
        return space

    @classmethod
    def dense_kernel(cls, attention: nn.MultiheadAttention) -> Tensor:
        """The dense layer's kernel in ``dense_weight``'s layout."""
        return torch.cat([w.flatten() for w in cls.operands(attention)])

    @classmethod
    def from_dense_at(cls, attention: nn.MultiheadAttention, ranks: Ranks) -> "SVDMultiheadAttention":
        """Each projection by its truncated SVD at its rank; the biases copied."""
        weights = projection_weights(attention)
        for name, w in zip(PROJECTIONS, weights):
            check_finite(f"attention {name} weight", w)
        layer = cls.empty_at(attention, ranks)._place(weights[0])
        with torch.no_grad():
            for name, w in zip(PROJECTIONS, weights):
                pair = getattr(layer, name)
                a, b = balanced_svd(as_float64(w), pair.rank)
                pair.first.weight.copy_(b)  # (R, in)
                pair.last.weight.copy_(a)   # (out, R)
            for mine, theirs in ((layer.in_proj_bias, attention.in_proj_bias), (layer.out_proj.last.bias,
                                 attention.out_proj.bias), (layer.bias_k, attention.bias_k),
                                 (layer.bias_v, attention.bias_v)):
                if mine is not None:
                    mine.copy_(theirs)
        return layer.train(attention.training)

    def dense_weight(self) -> Tensor:
        """The kernel: the q, k, v and output projection weights, flattened and concatenated
        (``E E + E kdim + E vdim + E E``; for ``kdim = vdim = E``, the dense layer's
        ``in_proj_weight`` (3E, E) and ``out_proj.weight`` (E, E) stacked, flattened), float64."""
        return torch.cat([getattr(self, name).dense_weight().flatten() for name in PROJECTIONS])

    def to_dense(self) -> nn.MultiheadAttention:
        """The ``nn.MultiheadAttention`` these factors make, same device, dtype and mode."""
        like = self.q_proj.first.weight
        dense = self.config.make().to(device=like.device, dtype=like.dtype)
        fill_dense(dense, [getattr(self, name).dense_weight() for name in PROJECTIONS], self.in_proj_bias,
                   self.out_proj.last.bias, self.bias_k, self.bias_v)
        return dense.train(self.training)

    def spec(self) -> dict[str, Any]:
        return {"config": self.config.as_dict(), "rank": list(self.ranks)}

    def extra_repr(self) -> str:
        return (f"{self.embed_dim}, num_heads={self.num_heads}, rank={self.ranks}, kdim={self.kdim}, "
                f"vdim={self.vdim}, batch_first={self.batch_first}")


def _fill(pair: SVDLinear, variance: float) -> None:
    """Zero-mean uniform factors whose product ``A B`` has ``variance`` per entry."""
    init_uniform_(pair.first.weight, 1.0 / pair.in_features)
    init_uniform_(pair.last.weight, variance * pair.in_features / pair.rank)


def _float_mask(mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """A bool mask (True: not attended) as the additive float mask the dense layer makes of it
    (0 or -inf); a float mask as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise ValueError("SVDMultiheadAttention: attention masks must be bool or floating point")
    return mask
