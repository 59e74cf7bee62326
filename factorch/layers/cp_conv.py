"""CP convolution: 1x1 (C -> R), (kh x 1) depthwise, (1 x kw) depthwise, 1x1 (R -> N).

Lebedev et al. 2015; methods.md section 3.1. The vertical conv carries the height stride, padding
and dilation, the horizontal one the width ones (reusing the height padding for the width is a
known bug of older code). Bias only on the last 1x1. Factor columns are balanced: each of the four
carries ``lambda_r^(1/4)``. A grouped conv gets one rank-R CP per group.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from factorch.decompositions.cp import cp_als, cp_to_tensor
from factorch.layers.base import FactorizedConv, as_float64, check_finite
from factorch.layers.conv_spec import ConvSpec
from factorch.rank import RankRule, RankSpec, resolve_rank


class CPConv2d(FactorizedConv):
    """``first`` 1x1 (C -> gR), ``vertical`` (kh x 1, groups=gR), ``horizontal`` (1 x kw, groups=gR),
    ``last`` 1x1 (gR -> N, bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        self.config = spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation, groups, bias, padding_mode)
        rank = int(rank[0]) if isinstance(rank, (tuple, list)) else int(rank)
        if not 1 <= rank <= self.max_rank(spec):
            raise ValueError(f"CP rank {rank} must be in [1, {self.max_rank(spec)}] for this layer")
        self.rank = rank
        g, gr = spec.groups, spec.groups * rank
        vertical, horizontal = spec.split_axes()
        self.first = nn.Conv2d(spec.in_channels, gr, 1, groups=g, bias=False)
        self.vertical = nn.Conv2d(gr, gr, groups=gr, bias=False, padding_mode=spec.padding_mode, **vertical)
        self.horizontal = nn.Conv2d(gr, gr, groups=gr, bias=False, padding_mode=spec.padding_mode, **horizontal)
        self.last = nn.Conv2d(gr, spec.out_channels, 1, groups=g, bias=spec.bias)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, gR, H, W) -> (B, gR, H', W) -> (B, gR, H', W') -> (B, N, H', W')
        return self.last(self.horizontal(self.vertical(self.first(x))))

    @staticmethod
    def max_rank(spec: ConvSpec) -> int:
        """Generic upper bound of the CP rank of one group's (N/g, C/g, kh, kw) block:
        the product of all dimensions but the largest."""
        dims = sorted(spec.weight_shape())
        return math.prod(dims[:-1])

    @property
    def ranks(self) -> tuple[int]:
        return (self.rank,)

    @classmethod
    def resolve_rank(cls, conv: nn.Conv2d, rank: RankSpec) -> tuple[int]:
        """One rank R per group. A rule takes ``max(R_out, R_in)`` of the two channel unfoldings
        (Elhoushi et al.); a fraction solves ``R (C + kh + kw + N) = f kh kw C N`` (per group)."""
        spec = ConvSpec.of(conv)
        n, c, kh, kw = spec.weight_shape()
        n //= spec.groups
        if isinstance(rank, RankRule):
            blocks = as_float64(conv.weight).chunk(spec.groups)
            per_mode = [[b.reshape(n, -1) for b in blocks], [b.transpose(0, 1).reshape(c, -1) for b in blocks]]
            r = max(resolve_rank(rank, (n, c), lambda: per_mode, lambda f: ()))
            return (min(r, cls.max_rank(spec)),)
        return resolve_rank(rank, (cls.max_rank(spec),), lambda: [],
                            lambda f: (int(f * kh * kw * c * n / (c + kh + kw + n)),))

    @classmethod
    def empty_like(cls, conv: nn.Conv2d, rank: RankSpec) -> "CPConv2d":
        return cls(**ConvSpec.of(conv).as_dict(), rank=cls.resolve_rank(conv, rank)[0])

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, rank: RankSpec, restarts: int = 1) -> "CPConv2d":
        """Decompose ``conv`` by CP-ALS per group (float64), in ``conv``'s dtype and device."""
        check_finite("conv weight", conv.weight)
        layer = cls.empty_like(conv, rank)._place(conv.weight)
        factors = [cp_als(block, layer.rank, restarts=restarts)
                   for block in as_float64(conv.weight).chunk(layer.config.groups)]
        with torch.no_grad():
            a = torch.cat([f[0] for f in factors], dim=0)  # (N, R): group i's rows use its R
            b, p, q = (torch.cat([f[k] for f in factors], dim=1) for k in (1, 2, 3))  # (dim, g*R)
            layer.first.weight.copy_(b.T.reshape(-1, b.shape[0], 1, 1))   # (gR, C/g, 1, 1)
            layer.vertical.weight.copy_(p.T[:, None, :, None])            # (gR, 1, kh, 1)
            layer.horizontal.weight.copy_(q.T[:, None, None, :])          # (gR, 1, 1, kw)
            layer.last.weight.copy_(a[:, :, None, None])                  # (N, R, 1, 1)
            if conv.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def dense_weight(self) -> Tensor:
        g, r = self.config.groups, self.rank
        b = as_float64(self.first.weight)[:, :, 0, 0]        # (gR, C/g)
        p = as_float64(self.vertical.weight)[:, 0, :, 0]     # (gR, kh)
        q = as_float64(self.horizontal.weight)[:, 0, 0, :]   # (gR, kw)
        a = as_float64(self.last.weight)[:, :, 0, 0]         # (N, R): group i's rows use its own R
        blocks = []
        for i, a_i in enumerate(a.chunk(g)):
            cols = slice(i * r, (i + 1) * r)
            blocks.append(cp_to_tensor([a_i, b[cols].T, p[cols].T, q[cols].T]))
        return torch.cat(blocks)



    def extra_repr(self) -> str:
        s = self.config
        return f"{s.in_channels}, {s.out_channels}, kernel_size={s.kernel_size}, rank={self.rank}, groups={s.groups}"

