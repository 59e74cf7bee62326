"""Tucker-2 convolution of any dimensionality, plain or transposed: 1x1 (C -> R_in), k-core
(R_in -> R_out), 1x1 (R_out -> N).

Kim et al. 2016 (``docs/math.md``, "Tucker-2 convolution"). The core conv carries the original stride, padding
(``'same'``, per-axis, ``padding_mode``), dilation and, for a transposed conv, output_padding: it is
a transposed conv itself, while the two 1x1 factors are plain pointwise convs (a per-pixel channel
map commutes with the sampling of any conv). Only the last 1x1 has a bias, so zero padding of the
core's input is exactly zero padding of the original input (a bias on the first 1x1 would make
border pixels wrong; after a transposed core, every output pixel gets the bias as in the dense
layer). A grouped conv is decomposed per group: every factor conv keeps ``groups`` and the ranks
are per group.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from factorch.decompositions.tucker import tucker2, tucker2_to_tensor
from factorch.layers.base import FactorizedConv, alias, check_finite, default_variance, init_bias, \
    init_uniform_, read_kernel, write_kernel
from factorch.layers.conv_spec import ConvSpec
from factorch.rank import Mode, RankSpace
from factorch.rank.space import Ranks


class TuckerConv(FactorizedConv):
    """``first`` 1x1 (C -> g*R_in), ``core`` k (g*R_in -> g*R_out; a transposed conv for a transposed
    layer), ``last`` 1x1 (g*R_out -> N, bias); 1-, 2- or 3-D as the dense conv (``ConvSpec``).

    ``rank``: ``(R_out, R_in)`` per group, or one int for both, each at most the full rank. The
    geometry arguments are ``nn.Conv*``'s (per-axis tuples set the dimensionality; all ints mean 2-D)
    plus ``transposed``/``output_padding`` for ``nn.ConvTranspose*``."""

    input_factor = "first"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int | tuple[int, int],
                 stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", transposed: bool = False, output_padding=0) -> None:
        super().__init__()
        self.config = spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation, groups, bias, padding_mode, transposed, output_padding)
        self.rank_out, self.rank_in = r_out, r_in = self.space(spec).check(rank)
        g = spec.groups
        self.first = spec.pointwise(spec.in_channels, g * r_in, groups=g)
        self.core = spec.make(in_channels=g * r_in, out_channels=g * r_out, bias=False)
        self.last = spec.pointwise(g * r_out, spec.out_channels, groups=g, bias=spec.bias)
        self.reset_parameters()

    def init_factors(self) -> None:
        """From scratch (zero-mean uniform factors): ``Var V = 1/C`` and ``Var U = 1/R_out`` keep the variance through the
        1x1s, the core has the default variance of a k conv over R_in channels, so the kernel
        ``W = G x_0 U x_1 V`` (a sum of R_out R_in products) has ``Var = 1 / (3 C prod(k))``, the default
        init of the dense conv (per group); a transposed conv's default is ``1 / (3 N prod(k))``
        (PyTorch's fan-in of its ``(C, N/g, *k)`` weight), hence the factor ``C prod(k) / fan_in``."""
        s = self.config
        c, k = s.in_channels // s.groups, math.prod(s.kernel_size)
        init_uniform_(self.first.weight, 1.0 / c)
        init_uniform_(self.core.weight, default_variance(self.rank_in * k) * (c * k / s.fan_in))
        init_uniform_(self.last.weight, 1.0 / self.rank_out)
        init_bias(self.last.bias, s.fan_in)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, *S) -> (B, gR_in, *S) -> (B, gR_out, *S') -> (B, N, *S')
        return self.last(self.core(self.first(x)))

    @property
    def ranks(self) -> tuple[int, int]:
        return (self.rank_out, self.rank_in)

    @classmethod
    def space(cls, spec: ConvSpec) -> RankSpace:
        """Modes (out N/g, in C/g). Per group, ``k = prod(kernel)``, ``P``/``P'`` the input/output
        positions: params ``C R_in + k R_in R_out + R_out N``; MACs ``P C R_in + core + P' R_out N``,
        the core ``P' k R_in R_out`` (transposed: ``P k R_in R_out``, every input pixel scattered
        through the kernel). The first 1x1 runs at the input resolution (Elhoushi et al. 2019, Eq. 11)."""
        g = spec.groups
        n, c = spec.out_channels // g, spec.in_channels // g
        k = math.prod(spec.kernel_size)

        def macs(ranks: tuple[int, ...], shape: tuple[int, ...]) -> int:
            r_out, r_in = ranks
            size = tuple(shape[-spec.dims:])
            p_in, p_out = math.prod(size), math.prod(spec.output_size(size))
            core = (p_in if spec.transposed else p_out) * g * k * r_in * r_out
            return p_in * g * c * r_in + core + p_out * g * n * r_out

        return RankSpace(
            cls.__name__, (Mode("out", n), Mode("in", c)),
            params=lambda r: g * (c * r[1] + k * r[1] * r[0] + r[0] * n),
            macs=macs, dense_params=g * n * c * k, dense_macs=spec.macs,
            bias=spec.out_channels if spec.bias else 0, error_modes=2, per_group=g > 1)

    @classmethod
    def operands(cls, conv) -> list[Tensor]:
        """Per group, the (N/g, C/g, *k) block of the kernel (``ConvSpec.as_kernel``), float64."""
        return list(read_kernel(conv).chunk(conv.groups, dim=0))

    @classmethod
    def unfold(cls, block: Tensor) -> list[list[Tensor]]:
        n, c = block.shape[:2]
        return [[block.reshape(n, -1)],                  # mode 0: (N/g, C/g prod(k))
                [block.transpose(0, 1).reshape(c, -1)]]  # mode 1: (C/g, N/g prod(k))

    @classmethod
    def from_dense_at(cls, conv, ranks: Ranks) -> "TuckerConv":
        """Decompose ``conv`` by HOOI per group (float64), in ``conv``'s dtype and device."""
        check_finite("conv weight", conv.weight)
        layer = cls.empty_at(conv, ranks)._place(conv.weight)
        cores, us, vs = [], [], []
        for block in cls.operands(conv):
            core, u, v = tucker2(block, layer.ranks)
            cores.append(core), us.append(u), vs.append(v)
        ones = (1,) * layer.config.dims
        # grouped 1x1 kernels stack the groups along dim 0: (g*R_in, C/g, 1..), (N, R_out, 1..)
        write_kernel(layer.first, torch.cat([v.T for v in vs]).reshape(-1, vs[0].shape[0], *ones))
        write_kernel(layer.core, torch.cat(cores))  # (g*R_out, R_in, *k)
        write_kernel(layer.last, torch.cat(us).reshape(*torch.cat(us).shape, *ones))
        if conv.bias is not None:
            with torch.no_grad():
                layer.last.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def dense_weight(self) -> Tensor:
        g = self.config.groups
        vs = read_kernel(self.first).flatten(1).chunk(g)  # g x (R_in, C/g)
        cores = read_kernel(self.core).chunk(g)           # g x (R_out, R_in, *k)
        us = read_kernel(self.last).flatten(1).chunk(g)   # g x (N/g, R_out)
        kernel = torch.cat([tucker2_to_tensor(gc, u, v.T) for gc, u, v in zip(cores, us, vs)])
        return self.config.as_weight(kernel)

    def extra_repr(self) -> str:
        s = self.config
        kind = "transposed, " if s.transposed else ""
        return (f"{s.in_channels}, {s.out_channels}, {kind}kernel_size={s.kernel_size}, "
                f"ranks=(out={self.rank_out}, in={self.rank_in}), groups={s.groups}")


TuckerConv2d = alias(TuckerConv, "TuckerConv2d")
