"""Tucker-2 convolution: 1x1 (C -> R_in), kxk core (R_in -> R_out), 1x1 (R_out -> N).

Kim et al. 2016; methods.md section 1. The core conv carries the original stride, padding
(``'same'``, per-axis, ``padding_mode``) and dilation; only the last 1x1 has a bias, so zero padding
of the core's input is exactly zero padding of the original input (a bias on the first 1x1 would
make border pixels wrong). A grouped conv is decomposed per group: every factor conv keeps
``groups`` and the ranks are per group.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from factorch.decompositions.tucker import tucker2, tucker2_to_tensor
from factorch.layers.base import FactorizedConv, as_float64, check_finite
from factorch.layers.conv_spec import ConvSpec
from factorch.rank import RankSpec, resolve_rank


def _group_blocks(weight: Tensor, groups: int) -> list[Tensor]:
    """(N, C/g, kh, kw) -> g blocks of (N/g, C/g, kh, kw)."""
    return list(weight.chunk(groups, dim=0))


class TuckerConv2d(FactorizedConv):
    """``first`` 1x1 (C -> g*R_in), ``core`` kxk (g*R_in -> g*R_out), ``last`` 1x1 (g*R_out -> N, bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int | tuple[int, int],
                 stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        self.config = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                      dilation, groups, bias, padding_mode)
        r_out, r_in = (rank, rank) if isinstance(rank, int) else (int(rank[0]), int(rank[1]))
        g = self.config.groups
        n, c = self.config.out_channels // g, self.config.in_channels // g
        if not (1 <= r_out <= n and 1 <= r_in <= c):
            raise ValueError(f"Tucker-2 ranks (out={r_out}, in={r_in}) must be in [1, {n}] x [1, {c}] (per group)")
        self.rank_out, self.rank_in = r_out, r_in
        spec = self.config
        self.first = nn.Conv2d(spec.in_channels, g * r_in, 1, groups=g, bias=False)
        self.core = spec.make(in_channels=g * r_in, out_channels=g * r_out, bias=False)
        self.last = nn.Conv2d(g * r_out, spec.out_channels, 1, groups=g, bias=spec.bias)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, gR_in, H, W) -> (B, gR_out, H', W') -> (B, N, H', W')
        return self.last(self.core(self.first(x)))

    @property
    def ranks(self) -> tuple[int, int]:
        return (self.rank_out, self.rank_in)

    @staticmethod
    def resolve_rank(conv: nn.Conv2d, rank: RankSpec) -> tuple[int, int]:
        """(R_out, R_in) per group for ``rank``; a fraction keeps ``R_out/R_in = N/C`` and solves
        ``C R_in + kh kw R_in R_out + R_out N = f kh kw C N`` (per group) for the largest ranks."""
        g = conv.groups
        n, c = conv.out_channels // g, conv.in_channels // g
        k = math.prod(conv.kernel_size)

        def unfoldings() -> list[list[Tensor]]:
            blocks = _group_blocks(as_float64(conv.weight), g)
            return [[b.reshape(n, -1) for b in blocks],                  # (N/g, C/g*kh*kw)
                    [b.transpose(0, 1).reshape(c, -1) for b in blocks]]  # (C/g, N/g*kh*kw)

        def from_fraction(f: float) -> tuple[int, int]:
            # R_in = rho c, R_out = rho n: k c n rho^2 + (c^2 + n^2) rho - f k c n = 0
            a, b, q = k * c * n, c * c + n * n, f * k * c * n
            rho = (-b + math.sqrt(b * b + 4 * a * q)) / (2 * a)
            return (int(rho * n), int(rho * c))

        return resolve_rank(rank, (n, c), unfoldings, from_fraction)

    @classmethod
    def empty_like(cls, conv: nn.Conv2d, rank: RankSpec) -> "TuckerConv2d":
        spec = ConvSpec.of(conv)
        return cls(**spec.as_dict(), rank=cls.resolve_rank(conv, rank))

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, rank: RankSpec) -> "TuckerConv2d":
        """Decompose ``conv`` by HOOI per group (float64), in ``conv``'s dtype and device."""
        check_finite("conv weight", conv.weight)
        layer = cls.empty_like(conv, rank)._place(conv.weight)
        g, (r_out, r_in) = layer.config.groups, layer.ranks
        cores, us, vs = [], [], []
        for block in _group_blocks(as_float64(conv.weight), g):
            core, u, v = tucker2(block, (r_out, r_in))
            cores.append(core), us.append(u), vs.append(v)
        with torch.no_grad():
            # grouped 1x1 weights stack the groups along dim 0: (g*R_in, C/g, 1, 1), (N, R_out, 1, 1)
            layer.first.weight.copy_(torch.cat([v.T for v in vs])[:, :, None, None])
            layer.core.weight.copy_(torch.cat(cores))  # (g*R_out, R_in, kh, kw)
            layer.last.weight.copy_(torch.cat(us)[:, :, None, None])
            if conv.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def dense_weight(self) -> Tensor:
        g = self.config.groups
        vs = as_float64(self.first.weight)[:, :, 0, 0].chunk(g)  # g x (R_in, C/g)
        cores = as_float64(self.core.weight).chunk(g)          # g x (R_out, R_in, kh, kw)
        us = as_float64(self.last.weight)[:, :, 0, 0].chunk(g)  # g x (N/g, R_out)
        return torch.cat([tucker2_to_tensor(gc, u, v.T) for gc, u, v in zip(cores, us, vs)])

    def extra_repr(self) -> str:
        s = self.config
        return (f"{s.in_channels}, {s.out_channels}, kernel_size={s.kernel_size}, "
                f"ranks=(out={self.rank_out}, in={self.rank_in}), groups={s.groups}")
