"""CP convolution: 1x1 (C -> R), (kh x 1) depthwise, (1 x kw) depthwise, 1x1 (R -> N).

Lebedev et al. 2015 (``docs/math.md``, "CP convolution"). The vertical conv carries the height stride, padding
and dilation, the horizontal one the width ones (reusing the height padding for the width is a
known bug of older code). Bias only on the last 1x1. Factor columns are balanced: each of the four
carries ``lambda_r^(1/4)``. A grouped conv gets one rank-R CP per group.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from factorch.decompositions.cp import cp_als, cp_als_seconds, cp_to_tensor
from factorch.layers.base import FactorizedConv, as_float64, check_finite, default_variance, init_bias, init_uniform_
from factorch.layers.conv_spec import ConvSpec
from factorch.rank import Mode, RankSpace
from factorch.rank.space import Ranks, cp_limit


class CPConv2d(FactorizedConv):
    """``first`` 1x1 (C -> gR), ``vertical`` (kh x 1, groups=gR), ``horizontal`` (1 x kw, groups=gR),
    ``last`` 1x1 (gR -> N, bias). ``rank``: R per group, at most ``max_rank``."""

    input_factor = "first"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        self.config = spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation, groups, bias, padding_mode)
        (rank,) = self.space(spec).check(rank)
        self.rank = rank
        g, gr = spec.groups, spec.groups * rank
        vertical, horizontal = spec.split_axes()
        self.first = nn.Conv2d(spec.in_channels, gr, 1, groups=g, bias=False)
        self.vertical = nn.Conv2d(gr, gr, groups=gr, bias=False, padding_mode=spec.padding_mode, **vertical)
        self.horizontal = nn.Conv2d(gr, gr, groups=gr, bias=False, padding_mode=spec.padding_mode, **horizontal)
        self.last = nn.Conv2d(gr, spec.out_channels, 1, groups=g, bias=spec.bias)
        self.reset_parameters()

    def init_factors(self) -> None:
        """From scratch (zero-mean uniform factors): ``Var B = 1/C``, ``Var P = 1/kh``, ``Var Q = 1/kw``
        keep the variance through the first three convs and ``Var A = 1/(3R)``, so the kernel (a sum of R products) has
        ``Var = 1 / (3 C kh kw)``, the default init of the dense conv (per group)."""
        _, c, kh, kw = self.config.weight_shape()
        init_uniform_(self.first.weight, 1.0 / c)
        init_uniform_(self.vertical.weight, 1.0 / kh)
        init_uniform_(self.horizontal.weight, 1.0 / kw)
        init_uniform_(self.last.weight, default_variance(self.rank))
        init_bias(self.last.bias, c * kh * kw)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, gR, H, W) -> (B, gR, H', W) -> (B, gR, H', W') -> (B, N, H', W')
        return self.last(self.horizontal(self.vertical(self.first(x))))

    @staticmethod
    def max_rank(spec: ConvSpec) -> int:
        """Generic upper bound of the CP rank of one group's (N/g, C/g, kh, kw) block:
        the product of all dimensions but the largest."""
        n, c, kh, kw = spec.weight_shape()
        dims = sorted((n // spec.groups, c, kh, kw))
        return math.prod(dims[:-1])

    @property
    def ranks(self) -> tuple[int]:
        return (self.rank,)

    @classmethod
    def space(cls, spec: ConvSpec) -> RankSpace:
        """One mode, R (full: ``max_rank``), tied to three unfoldings: a rank-R CP kernel has rank
        <= R in each, so a rule takes the largest rank they give (for the channel unfoldings this
        is Elhoushi et al.'s ``max(R_out, R_in)``). Per group: params ``R (C + kh + kw + N)``; MACs
        ``H W C R + H' W kh R + H' W' kw R + H' W' R N``. Worth computing up to ``max(N, C)``
        (``cp_limit``: the decision path passes CP over beyond it); ALS time ``cp_als_seconds``."""
        g = spec.groups
        n, c, kh, kw = spec.weight_shape()
        n //= g
        vertical, _ = spec.split_axes()
        along_h = replace(spec, **vertical)

        def macs(ranks: tuple[int, ...], shape: tuple[int, ...]) -> int:
            (r,) = ranks
            h, w = shape[-2:]
            hv, _ = along_h.output_size((h, w))
            ho, wo = spec.output_size((h, w))
            return g * r * (h * w * c + hv * w * kh + ho * wo * kw + ho * wo * n)

        return RankSpace("CPConv2d", (Mode("rank", cls.max_rank(spec)),),
                         params=lambda r: g * r[0] * (c + kh + kw + n), macs=macs,
                         dense_params=g * n * c * kh * kw, dense_macs=spec.macs,
                         bias=spec.out_channels if spec.bias else 0, error_modes=0, per_group=g > 1,
                         limit=cp_limit(g * n, g * c, (kh, kw), g),
                         work=lambda r: (g * cp_als_seconds((n, c, kh, kw), r[0]), "CP-ALS"))

    @classmethod
    def operands(cls, conv: nn.Conv2d) -> list[Tensor]:
        """Per group, the (N/g, C/g, kh, kw) block of the kernel, float64."""
        return list(as_float64(conv.weight).chunk(conv.groups, dim=0))

    @classmethod
    def unfold(cls, block: Tensor) -> list[list[Tensor]]:
        n, c, kh, kw = block.shape
        return [[block.reshape(n, -1),                                    # (N, C kh kw)
                 block.transpose(0, 1).reshape(c, -1),                    # (C, N kh kw)
                 block.permute(0, 2, 1, 3).reshape(n * kh, c * kw)]]      # (N kh, C kw)

    @classmethod
    def from_dense_at(cls, conv: nn.Conv2d, ranks: Ranks, restarts: int = 1) -> "CPConv2d":
        """Decompose ``conv`` by CP-ALS per group (float64), in ``conv``'s dtype and device."""
        check_finite("conv weight", conv.weight)
        layer = cls.empty_at(conv, ranks)._place(conv.weight)
        factors = [cp_als(block, layer.rank, restarts=restarts) for block in cls.operands(conv)]
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
