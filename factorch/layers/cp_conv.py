"""CP convolution of any dimensionality, plain or transposed: 1x1 (C -> R), one depthwise one-axis
conv per spatial axis, 1x1 (R -> N).

Lebedev et al. 2015 (``docs/math.md``, "CP convolution"). The kernel ``W[n, c, i_1, .., i_d] ~=
sum_r A[n, r] B[c, r] P_1[i_1, r] .. P_d[i_d, r]`` is separable per component, so the window's
sampling factorizes over the axes: the one-axis conv of axis a carries that axis's stride, padding,
dilation and (transposed) output_padding, and nothing of the others (reusing the height padding
for the width is a known bug of older code). A transposed layer's one-axis convs are transposed
depthwise convs: scattering each input pixel through a separable window is scattering it along
one axis, then the next. The axis convs are named after PyTorch's spatial axes (D, H, W):
``depth``, ``vertical``, ``horizontal`` (the last ``d``: a 1-D conv has ``horizontal`` only, a
2-D one ``vertical`` and ``horizontal`` as the 2-D layer always had). Bias only on the last 1x1.
Factor columns are balanced: each of the ``d + 2`` carries ``lambda_r^(1/(d+2))``. A grouped conv
gets one rank-R CP per group.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor, nn

from factorch.decompositions.cp import cp_als, cp_als_seconds, cp_to_tensor
from factorch.layers.base import FactorizedConv, alias, check_finite, default_variance, init_bias, init_uniform_, \
    read_kernel, write_kernel
from factorch.layers.conv_spec import ConvSpec
from factorch.rank import Mode, RankSpace
from factorch.rank.space import Ranks, cp_limit

AXES = ("depth", "vertical", "horizontal")  # PyTorch's (D, H, W): the last d name a d-D layer's axis convs


class CPConv(FactorizedConv):
    """``first`` 1x1 (C -> gR), per spatial axis a depthwise one-axis conv (``groups=gR``; transposed for
    a transposed layer): ``depth`` (3-D), ``vertical`` (2-D, 3-D), ``horizontal``; ``last`` 1x1
    (gR -> N, bias). ``rank``: R per group, at most ``max_rank``. Geometry arguments as ``TuckerConv``."""

    input_factor = "first"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", transposed: bool = False, output_padding=0) -> None:
        super().__init__()
        self.config = spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation, groups, bias, padding_mode, transposed, output_padding)
        (rank,) = self.space(spec).check(rank)
        self.rank = rank
        g, gr = spec.groups, spec.groups * rank
        self.first = spec.pointwise(spec.in_channels, gr, groups=g)
        self.depth: Optional[nn.Module] = None
        self.vertical: Optional[nn.Module] = None
        for name, geometry in zip(AXES[-spec.dims:], spec.split_axes()):
            setattr(self, name, spec.make(in_channels=gr, out_channels=gr, groups=gr, bias=False, **geometry))
        self.last = spec.pointwise(gr, spec.out_channels, groups=g, bias=spec.bias)
        self.reset_parameters()

    def axis_convs(self) -> list[nn.Module]:
        """The one-axis convs in the order they run (D, H, W)."""
        return [getattr(self, name) for name in AXES[-self.config.dims:]]

    def init_factors(self) -> None:
        """From scratch (zero-mean uniform factors): ``Var B = 1/C``, ``Var P_a = 1/k_a`` keep the
        variance through the first convs and ``Var A = 1/(3R)``, so the kernel (a sum of R products) has
        ``Var = 1 / (3 C prod(k))``, the default init of the dense conv (per group); times
        ``C prod(k) / fan_in`` for a transposed conv (PyTorch's fan-in of its weight is ``N/g prod(k)``)."""
        s = self.config
        c, k = s.in_channels // s.groups, math.prod(s.kernel_size)
        init_uniform_(self.first.weight, 1.0 / c)
        for conv, k_a in zip(self.axis_convs(), s.kernel_size):
            init_uniform_(conv.weight, 1.0 / k_a)
        init_uniform_(self.last.weight, default_variance(self.rank) * (c * k / s.fan_in))
        init_bias(self.last.bias, s.fan_in)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, *S) -> (B, gR, *S) -> one axis at a time -> (B, gR, *S') -> (B, N, *S')
        x = self.first(x)
        if self.depth is not None:
            x = self.depth(x)
        if self.vertical is not None:
            x = self.vertical(x)
        return self.last(self.horizontal(x))

    @staticmethod
    def max_rank(spec: ConvSpec) -> int:
        """Generic upper bound of the CP rank of one group's (N/g, C/g, *k) block: the product of
        all dimensions but the largest."""
        _, c, *k = spec.kernel_shape()
        dims = sorted((spec.out_channels // spec.groups, c, *k))
        return math.prod(dims[:-1])

    @property
    def ranks(self) -> tuple[int]:
        return (self.rank,)

    @classmethod
    def space(cls, spec: ConvSpec) -> RankSpace:
        """One mode, R (full: ``max_rank``), tied to the unfoldings ``unfold`` gives: a rank-R CP
        kernel has rank <= R in each, so a rule takes the largest rank they give (for the channel
        unfoldings this is Elhoushi et al.'s ``max(R_out, R_in)``). Per group: params
        ``R (C + sum(k) + N)``; MACs ``P C R + sum_a (axis conv a) + P' R N``, axis conv a costing
        ``k_a R`` per output position (transposed: per input position) at the size the axes before it
        left. Worth computing up to ``max(N, C)`` (``cp_limit``: the decision path passes CP over
        beyond it); ALS time ``cp_als_seconds``."""
        g = spec.groups
        n, c = spec.out_channels // g, spec.in_channels // g
        axes = [replace(spec, **geometry) for geometry in spec.split_axes()]

        def macs(ranks: tuple[int, ...], shape: tuple[int, ...]) -> int:
            (r,) = ranks
            size = tuple(shape[-spec.dims:])
            total = math.prod(size) * c
            for axis, k_a in zip(axes, spec.kernel_size):
                out = axis.output_size(size)
                total += math.prod(size if spec.transposed else out) * k_a
                size = out
            return g * r * (total + math.prod(size) * n)

        return RankSpace(cls.__name__, (Mode("rank", cls.max_rank(spec)),),
                         params=lambda r: g * r[0] * (c + sum(spec.kernel_size) + n), macs=macs,
                         dense_params=g * n * c * math.prod(spec.kernel_size), dense_macs=spec.macs,
                         bias=spec.out_channels if spec.bias else 0, error_modes=0, per_group=g > 1,
                         limit=cp_limit(g * n, g * c, spec.kernel_size, g),
                         work=lambda r: (g * cp_als_seconds((n, c, *spec.kernel_size), r[0]), "CP-ALS"))

    @classmethod
    def operands(cls, conv) -> list[Tensor]:
        """Per group, the (N/g, C/g, *k) block of the kernel (``ConvSpec.as_kernel``), float64."""
        return list(read_kernel(conv).chunk(conv.groups, dim=0))

    @classmethod
    def unfold(cls, block: Tensor) -> list[list[Tensor]]:
        """The channel unfoldings ``(N, C prod k)``, ``(C, N prod k)`` and, with two or more spatial
        axes, the balanced ``(N k_1, C k_2 .. k_d)`` (2-D: ``(N kh, C kw)``)."""
        n, c, *k = block.shape
        tied = [block.reshape(n, -1), block.transpose(0, 1).reshape(c, -1)]
        if len(k) > 1:
            tied.append(block.transpose(1, 2).reshape(n * k[0], -1))
        return [tied]

    @classmethod
    def from_dense_at(cls, conv, ranks: Ranks, restarts: int = 1) -> "CPConv":
        """Decompose ``conv`` by CP-ALS per group (float64), in ``conv``'s dtype and device."""
        check_finite("conv weight", conv.weight)
        layer = cls.empty_at(conv, ranks)._place(conv.weight)
        factors = [cp_als(block, layer.rank, restarts=restarts) for block in cls.operands(conv)]
        d = layer.config.dims
        a = torch.cat([f[0] for f in factors], dim=0)  # (N, R): group i's rows use its R
        b, *spatial = (torch.cat([f[k] for f in factors], dim=1) for k in range(1, d + 2))  # (dim, g*R)
        write_kernel(layer.first, b.T.reshape(-1, b.shape[0], *(1,) * d))  # (gR, C/g, 1..)
        for axis, (conv_a, p) in enumerate(zip(layer.axis_convs(), spatial)):  # (gR, 1, .., k_a, ..)
            write_kernel(conv_a, p.T.reshape(-1, 1, *(p.shape[0] if i == axis else 1 for i in range(d))))
        write_kernel(layer.last, a.reshape(*a.shape, *(1,) * d))  # (N, R, 1..)
        if conv.bias is not None:
            with torch.no_grad():
                layer.last.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def dense_weight(self) -> Tensor:
        g, r = self.config.groups, self.rank
        b = read_kernel(self.first).flatten(1)                               # (gR, C/g)
        spatial = [read_kernel(conv).flatten(1) for conv in self.axis_convs()]  # (gR, k_a) each
        a = read_kernel(self.last).flatten(1)                                # (N, R): group i's rows use its own R
        blocks = []
        for i, a_i in enumerate(a.chunk(g)):
            cols = slice(i * r, (i + 1) * r)
            blocks.append(cp_to_tensor([a_i, b[cols].T, *(p[cols].T for p in spatial)]))
        return self.config.as_weight(torch.cat(blocks))

    def extra_repr(self) -> str:
        s = self.config
        kind = "transposed, " if s.transposed else ""
        return (f"{s.in_channels}, {s.out_channels}, {kind}kernel_size={s.kernel_size}, rank={self.rank}, "
                f"groups={s.groups}")


CPConv2d = alias(CPConv, "CPConv2d")
