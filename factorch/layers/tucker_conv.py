"""Tucker-2 convolution: 1x1 (C -> R_in), kxk core (R_in -> R_out), 1x1 (R_out -> N).

Kim et al. 2016 (``docs/math.md``, "Tucker-2 convolution"). The core conv carries the original stride, padding
(``'same'``, per-axis, ``padding_mode``) and dilation; only the last 1x1 has a bias, so zero padding
of the core's input is exactly zero padding of the original input (a bias on the first 1x1 would
make border pixels wrong). A grouped conv is decomposed per group: every factor conv keeps
``groups`` and the ranks are per group.
"""
from __future__ import annotations


import torch
from torch import Tensor, nn

from factorch.decompositions.tucker import tucker2, tucker2_to_tensor
from factorch.layers.base import FactorizedConv, as_float64, check_finite, default_variance, init_bias, init_uniform_
from factorch.layers.conv_spec import ConvSpec
from factorch.rank import Mode, RankSpace
from factorch.rank.space import Ranks


class TuckerConv2d(FactorizedConv):
    """``first`` 1x1 (C -> g*R_in), ``core`` kxk (g*R_in -> g*R_out), ``last`` 1x1 (g*R_out -> N, bias).

    ``rank``: ``(R_out, R_in)`` per group, or one int for both, each at most the full rank."""

    input_factor = "first"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int | tuple[int, int],
                 stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        self.config = spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation, groups, bias, padding_mode)
        self.rank_out, self.rank_in = r_out, r_in = self.space(spec).check(rank)
        g = spec.groups
        self.first = nn.Conv2d(spec.in_channels, g * r_in, 1, groups=g, bias=False)
        self.core = spec.make(in_channels=g * r_in, out_channels=g * r_out, bias=False)
        self.last = nn.Conv2d(g * r_out, spec.out_channels, 1, groups=g, bias=spec.bias)
        self.reset_parameters()

    def init_factors(self) -> None:
        """From scratch (zero-mean uniform factors): ``Var V = 1/C`` and ``Var U = 1/R_out`` keep the variance through the
        1x1s, the core has the default variance of a kxk conv over R_in channels, so the kernel
        ``W = G x_0 U x_1 V`` (a sum of R_out R_in products) has ``Var = 1 / (3 C kh kw)``, the default
        init of the dense conv (per group)."""
        n, c, kh, kw = self.config.weight_shape()
        init_uniform_(self.first.weight, 1.0 / c)
        init_uniform_(self.core.weight, default_variance(self.rank_in * kh * kw))
        init_uniform_(self.last.weight, 1.0 / self.rank_out)
        init_bias(self.last.bias, c * kh * kw)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, gR_in, H, W) -> (B, gR_out, H', W') -> (B, N, H', W')
        return self.last(self.core(self.first(x)))

    @property
    def ranks(self) -> tuple[int, int]:
        return (self.rank_out, self.rank_in)

    @classmethod
    def space(cls, spec: ConvSpec) -> RankSpace:
        """Modes (out N/g, in C/g). Per group: params ``C R_in + kh kw R_in R_out + R_out N``;
        MACs ``H W C R_in + H' W' kh kw g R_in R_out + H' W' R_out N`` (the first 1x1 runs at the input
        resolution, as in Elhoushi et al. 2019, Eq. 11)."""
        g = spec.groups
        n, c, kh, kw = spec.weight_shape()
        n //= g
        k = kh * kw

        def macs(ranks: tuple[int, ...], shape: tuple[int, ...]) -> int:
            r_out, r_in = ranks
            h, w = shape[-2:]
            ho, wo = spec.output_size((h, w))
            return h * w * g * c * r_in + ho * wo * g * k * r_in * r_out + ho * wo * g * n * r_out

        return RankSpace(
            "TuckerConv2d", (Mode("out", n), Mode("in", c)),
            params=lambda r: g * (c * r[1] + k * r[1] * r[0] + r[0] * n),
            macs=macs, dense_params=g * n * c * k, dense_macs=spec.macs,
            bias=spec.out_channels if spec.bias else 0, error_modes=2, per_group=g > 1)

    @classmethod
    def operands(cls, conv: nn.Conv2d) -> list[Tensor]:
        """Per group, the (N/g, C/g, kh, kw) block of the kernel, float64."""
        return list(as_float64(conv.weight).chunk(conv.groups, dim=0))

    @classmethod
    def unfold(cls, block: Tensor) -> list[list[Tensor]]:
        n, c = block.shape[:2]
        return [[block.reshape(n, -1)],                  # mode 0: (N/g, C/g kh kw)
                [block.transpose(0, 1).reshape(c, -1)]]  # mode 1: (C/g, N/g kh kw)

    @classmethod
    def from_dense_at(cls, conv: nn.Conv2d, ranks: Ranks) -> "TuckerConv2d":
        """Decompose ``conv`` by HOOI per group (float64), in ``conv``'s dtype and device."""
        check_finite("conv weight", conv.weight)
        layer = cls.empty_at(conv, ranks)._place(conv.weight)
        cores, us, vs = [], [], []
        for block in cls.operands(conv):
            core, u, v = tucker2(block, layer.ranks)
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
