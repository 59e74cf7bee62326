"""Tucker-3 convolution: the spatial mode is factorized too (Gobieski et al., course project).

The kernel W (N, C, *k) of a conv of any dimensionality, plain or transposed (``ConvSpec.as_kernel``),
is the 3-way tensor (N, C, D = prod(k): the spatial axes flattened into one mode) and, per group,
``W ~= G x_0 W_N x_1 W_C x_2 W_D`` with ``G`` (N', C', D'), ``W_N`` (N, N'), ``W_C`` (C, C'),
``W_D`` (D, D'); ``vec(W) = (W_D kron W_C kron W_N) vec(G)`` (column-major vec, as in the project).

Forward: ``first`` 1x1 (C -> C', weight ``W_C^T``) -> ``core``, a k conv (C' -> N'; transposed for a
transposed layer) with the original stride, padding (``'same'``, per-axis, ``padding_mode``),
dilation and output_padding whose kernel ``K = G x_2 W_D`` (reshaped (N', C', *k)) is rebuilt
from ``G`` and ``W_D`` at each call
(``N' C' D' D`` multiply-adds per group, whatever the batch) -> ``last`` 1x1 (N' -> N, ``W_N``,
the bias). As in Tucker-2, only the last conv has a bias, so zero padding stays exact. Params per
group ``C C' + N' C' D' + D D' + N' N`` (Tucker-2 at (N', C') has ``N' C' D``); MACs as Tucker-2
at (N', C') plus the kernel rebuild. ``docs/math.md``, "Tucker-3 with a factorized spatial mode".
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from factorch.decompositions.tucker import tucker3, tucker3_to_tensor
from factorch.layers.base import FactorizedConv, alias, as_float64, check_finite, default_variance, init_bias, \
    init_uniform_, read_kernel, traced_for_script, write_kernel
from factorch.layers.conv_spec import ConvSpec
from factorch.rank import Mode, RankSpace
from factorch.rank.space import Ranks


class SpatialCoreConv(nn.Module):
    """A k conv (g C' -> g N', ``groups=g``; plain or transposed as ``spec``) whose kernel is
    ``G x_2 W_D`` per group, rebuilt at each call: ``core`` (g N', C', D') holds G, ``basis``
    (g, D, D') holds W_D. It counts its own MACs (``factorch.measure.count`` protocol): the conv's
    plus the rebuild's."""

    def __init__(self, spec: ConvSpec, spatial_rank: int) -> None:
        super().__init__()
        self.config = spec
        g, (n_out, c_in, *k) = spec.groups, spec.kernel_shape()
        self.core = nn.Parameter(torch.empty(n_out, c_in, spatial_rank))
        self.basis = nn.Parameter(torch.empty(g, math.prod(k), spatial_rank))

    def kernel(self) -> Tensor:
        """``K = G x_2 W_D`` per group: (g N', C', *k), the kernel layout (``ConvSpec.as_kernel``)."""
        g, d_rank = self.basis.shape[0], self.basis.shape[-1]
        core = self.core.reshape(g, -1, self.core.shape[1], d_rank)     # (g, N', C', D')
        k = torch.einsum("gocr,gdr->gocd", core, self.basis)            # (g, N', C', D)
        return k.reshape(self.core.shape[0], self.core.shape[1], *self.config.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        # (B, gC', *S) -> (B, gN', *S'); a transposed conv takes the kernel with its input channels first
        return self.config.conv(x, self.config.as_weight(self.kernel()))

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: a trace (``traced_for_script``): the conv geometry lives in a
        ``ConvSpec``, which TorchScript cannot compile; the forward branches on nothing."""
        return traced_for_script(self, self.config.smallest_input(self.core))

    def extra_repr(self) -> str:
        s = self.config
        return (f"{self.core.shape[1] * s.groups}, {self.core.shape[0]}, kernel_size={s.kernel_size}, stride={s.stride}, "
                f"spatial_rank={self.basis.shape[-1]}, groups={s.groups}")

    def count_macs(self, input: Tensor, output: Tensor) -> int:
        """The conv: ``P' g N' C' prod(k)`` per example (transposed: ``P g C' N' prod(k)``, ``P`` the
        input positions); the rebuild: ``g N' C' D' D`` per call."""
        scattered = input.numel() * (self.config.out_channels // self.config.groups) if self.config.transposed \
            else output.numel() * self.core.shape[1]
        return scattered * math.prod(self.config.kernel_size) + self.core.numel() * self.basis.shape[1]


class Tucker3Conv(FactorizedConv):
    """``first`` 1x1 (C -> g C'), ``core`` (``SpatialCoreConv``, k, g C' -> g N'), ``last`` 1x1
    (g N' -> N, bias); 1-, 2- or 3-D, plain or transposed (geometry arguments as ``TuckerConv``).
    ``rank``: ``(N', C', D')`` per group, or one int for all three, each in ``[1, full]``
    (N/g, C/g, prod(k))."""

    input_factor = "first"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int | tuple[int, int, int],
                 stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", transposed: bool = False, output_padding=0) -> None:
        super().__init__()
        self.config = spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation, groups, bias, padding_mode, transposed, output_padding)
        self.rank_out, self.rank_in, self.rank_spatial = r_out, r_in, r_d = self.space(spec).check(rank)
        g = spec.groups
        self.first = spec.pointwise(spec.in_channels, g * r_in, groups=g)
        self.core = SpatialCoreConv(replace(spec, in_channels=g * r_in, out_channels=g * r_out, bias=False), r_d)
        self.last = spec.pointwise(g * r_out, spec.out_channels, groups=g, bias=spec.bias)
        self.reset_parameters()

    def init_factors(self) -> None:
        """From scratch (zero-mean uniform factors): ``Var W_C = 1/C``, ``Var W_D = 1/D'``,
        ``Var W_N = 1/N'`` and ``Var G = 1/(3 C' D)``, so the kernel (a sum of N' C' D' products) has
        ``Var = 1 / (3 C D)``, the default init of the dense conv (per group), times ``C D / fan_in``
        for a transposed conv (PyTorch's fan-in of its weight is ``N/g D``); the rebuilt k kernel has
        the default variance of a conv over C' channels."""
        s = self.config
        c, d = s.in_channels // s.groups, math.prod(s.kernel_size)
        init_uniform_(self.first.weight, 1.0 / c)
        init_uniform_(self.core.basis, 1.0 / self.rank_spatial)
        init_uniform_(self.core.core, default_variance(self.rank_in * d) * (c * d / s.fan_in))
        init_uniform_(self.last.weight, 1.0 / self.rank_out)
        init_bias(self.last.bias, s.fan_in)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, *S) -> (B, gC', *S) -> (B, gN', *S') -> (B, N, *S')
        return self.last(self.core(self.first(x)))

    @property
    def ranks(self) -> tuple[int, int, int]:
        return (self.rank_out, self.rank_in, self.rank_spatial)

    @classmethod
    def space(cls, spec: ConvSpec) -> RankSpace:
        """Modes (out N/g, in C/g, spatial D = prod(k)). Per group, ``P``/``P'`` the input/output
        positions: params ``C C' + N' C' D' + D D' + N' N``; MACs ``P C C' + core + g N' C' D' D +
        P' N' N`` with the core ``P' D g C' N'`` (transposed ``P D g C' N'``) and the rebuild once per call."""
        if math.prod(spec.kernel_size) == 1:
            raise ValueError("Tucker-3 needs a kernel larger than 1x1 (a spatial mode prod(k) > 1 to factorize); "
                             "SVD handles 1x1 convs")
        g = spec.groups
        n, c = spec.out_channels // g, spec.in_channels // g
        d = math.prod(spec.kernel_size)

        def macs(ranks: tuple[int, ...], shape: tuple[int, ...]) -> int:
            r_out, r_in, r_d = ranks
            size = tuple(shape[-spec.dims:])
            p_in, p_out = math.prod(size), math.prod(spec.output_size(size))
            core = (p_in if spec.transposed else p_out) * g * d * r_in * r_out
            return p_in * g * c * r_in + core + g * r_out * r_in * r_d * d + p_out * g * n * r_out

        return RankSpace(
            cls.__name__, (Mode("out", n), Mode("in", c), Mode("spatial", d)),
            params=lambda r: g * (c * r[1] + r[0] * r[1] * r[2] + d * r[2] + r[0] * n),
            macs=macs, dense_params=g * n * c * d, dense_macs=spec.macs,
            bias=spec.out_channels if spec.bias else 0, error_modes=3, per_group=g > 1)

    @classmethod
    def operands(cls, conv) -> list[Tensor]:
        """Per group, the kernel block as the 3-way (N/g, C/g, prod(k)) tensor, float64."""
        return [b.reshape(*b.shape[:2], -1) for b in read_kernel(conv).chunk(conv.groups, dim=0)]

    @classmethod
    def unfold(cls, block: Tensor) -> list[list[Tensor]]:
        """The three mode unfoldings: at full ranks HOOI is the HOSVD, whose core has these
        singular values per mode, so a rule on them is the project's "HOOI, then the singular values
        of each mode"."""
        return [[block.movedim(k, 0).reshape(block.shape[k], -1)] for k in range(3)]

    @classmethod
    def from_dense_at(cls, conv, ranks: Ranks) -> "Tucker3Conv":
        """Decompose ``conv`` by HOOI on (N, C, prod(k)) per group (float64), in ``conv``'s dtype and device."""
        check_finite("conv weight", conv.weight)
        layer = cls.empty_at(conv, ranks)._place(conv.weight)
        parts = [tucker3(block, layer.ranks) for block in cls.operands(conv)]  # (G, W_N, W_C, W_D) per group
        ones = (1,) * layer.config.dims
        w_c = torch.cat([w_c.T for _, _, w_c, _ in parts])   # (gC', C/g)
        w_n = torch.cat([w_n for _, w_n, _, _ in parts])     # (N, N')
        write_kernel(layer.first, w_c.reshape(*w_c.shape, *ones))
        write_kernel(layer.last, w_n.reshape(*w_n.shape, *ones))
        with torch.no_grad():
            layer.core.core.copy_(torch.cat([g for g, _, _, _ in parts]))                          # (gN', C', D')
            layer.core.basis.copy_(torch.stack([w_d for _, _, _, w_d in parts]))                   # (g, D, D')
            if conv.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def dense_weight(self) -> Tensor:
        g = self.config.groups
        w_c = read_kernel(self.first).flatten(1).chunk(g)  # g x (C', C/g)
        core = as_float64(self.core.core).chunk(g)         # g x (N', C', D')
        w_d = as_float64(self.core.basis)                  # (g, D, D')
        w_n = read_kernel(self.last).flatten(1).chunk(g)   # g x (N/g, N')
        blocks = [tucker3_to_tensor(gc, wn, wc.T, wd) for gc, wn, wc, wd in zip(core, w_n, w_c, w_d)]
        return self.config.as_weight(torch.cat(blocks).reshape(self.config.kernel_shape()))

    def extra_repr(self) -> str:
        s = self.config
        kind = "transposed, " if s.transposed else ""
        return (f"{s.in_channels}, {s.out_channels}, {kind}kernel_size={s.kernel_size}, ranks=(out={self.rank_out}, "
                f"in={self.rank_in}, spatial={self.rank_spatial}), groups={s.groups}")


Tucker3Conv2d = alias(Tucker3Conv, "Tucker3Conv2d")
