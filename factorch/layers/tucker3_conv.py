"""Tucker-3 convolution: the spatial mode is factorized too (Gobieski et al., course project).

The kernel W (N, C, kh, kw) is the 3-way tensor (N, C, D = kh kw) and, per group,
``W ~= G x_0 W_N x_1 W_C x_2 W_D`` with ``G`` (N', C', D'), ``W_N`` (N, N'), ``W_C`` (C, C'),
``W_D`` (D, D'); ``vec(W) = (W_D kron W_C kron W_N) vec(G)`` (column-major vec, as in the project).

Forward: ``first`` 1x1 (C -> C', weight ``W_C^T``) -> ``core``, a kxk conv (C' -> N') with the
original stride, padding (``'same'``, per-axis, ``padding_mode``) and dilation whose kernel
``K = G x_2 W_D`` (reshaped (N', C', kh, kw)) is rebuilt from ``G`` and ``W_D`` at each call
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
from factorch.layers.base import FactorizedConv, as_float64, check_finite, default_variance, init_bias, init_uniform_, \
    traced_for_script
from factorch.layers.conv_spec import ConvSpec
from factorch.rank import Mode, RankSpace
from factorch.rank.space import Ranks


class SpatialCoreConv(nn.Module):
    """A kxk conv (g C' -> g N', ``groups=g``) whose kernel is ``G x_2 W_D`` per group, rebuilt at
    each call: ``core`` (g N', C', D') holds G, ``basis`` (g, D, D') holds W_D. It counts its own
    MACs (``factorch.measure.count`` protocol): the conv's plus the rebuild's."""

    def __init__(self, spec: ConvSpec, spatial_rank: int) -> None:
        super().__init__()
        self.config = spec
        g, (n_out, c_in, kh, kw) = spec.groups, spec.weight_shape()
        self.core = nn.Parameter(torch.empty(n_out, c_in, spatial_rank))
        self.basis = nn.Parameter(torch.empty(g, kh * kw, spatial_rank))

    def kernel(self) -> Tensor:
        """``K = G x_2 W_D`` per group: (g N', C', kh, kw)."""
        g, d_rank = self.basis.shape[0], self.basis.shape[-1]
        core = self.core.reshape(g, -1, self.core.shape[1], d_rank)     # (g, N', C', D')
        k = torch.einsum("gocr,gdr->gocd", core, self.basis)            # (g, N', C', D)
        return k.reshape(self.core.shape[0], self.core.shape[1], *self.config.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.config.conv(x, self.kernel())  # (B, gC', H, W) -> (B, gN', H', W')

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: a trace (``traced_for_script``): the conv geometry lives in a
        ``ConvSpec``, which TorchScript cannot compile; the forward branches on nothing."""
        return traced_for_script(self, self.config.smallest_input(self.core))

    def extra_repr(self) -> str:
        s = self.config
        return (f"{self.core.shape[1] * s.groups}, {self.core.shape[0]}, kernel_size={s.kernel_size}, stride={s.stride}, "
                f"spatial_rank={self.basis.shape[-1]}, groups={s.groups}")

    def count_macs(self, input: Tensor, output: Tensor) -> int:
        """The conv: ``H' W' g N' C' kh kw`` per example; the rebuild: ``g N' C' D' D`` per call."""
        return output.numel() * self.core.shape[1] * math.prod(self.config.kernel_size) + \
            self.core.numel() * self.basis.shape[1]


class Tucker3Conv2d(FactorizedConv):
    """``first`` 1x1 (C -> g C'), ``core`` (``SpatialCoreConv``, kxk, g C' -> g N'), ``last`` 1x1
    (g N' -> N, bias). ``rank``: ``(N', C', D')`` per group, or one int for all three, each in
    ``[1, full]`` (N/g, C/g, kh kw)."""

    input_factor = "first"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int | tuple[int, int, int],
                 stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        self.config = spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation, groups, bias, padding_mode)
        self.rank_out, self.rank_in, self.rank_spatial = r_out, r_in, r_d = self.space(spec).check(rank)
        g = spec.groups
        self.first = nn.Conv2d(spec.in_channels, g * r_in, 1, groups=g, bias=False)
        self.core = SpatialCoreConv(replace(spec, in_channels=g * r_in, out_channels=g * r_out, bias=False), r_d)
        self.last = nn.Conv2d(g * r_out, spec.out_channels, 1, groups=g, bias=spec.bias)
        self.reset_parameters()

    def init_factors(self) -> None:
        """From scratch (zero-mean uniform factors): ``Var W_C = 1/C``, ``Var W_D = 1/D'``,
        ``Var W_N = 1/N'`` and ``Var G = 1/(3 C' D)``, so the kernel (a sum of N' C' D' products) has
        ``Var = 1 / (3 C D)``, the default init of the dense conv (per group); the rebuilt kxk
        kernel has the default variance of a conv over C' channels."""
        _, c, kh, kw = self.config.weight_shape()
        init_uniform_(self.first.weight, 1.0 / c)
        init_uniform_(self.core.basis, 1.0 / self.rank_spatial)
        init_uniform_(self.core.core, default_variance(self.rank_in * kh * kw))
        init_uniform_(self.last.weight, 1.0 / self.rank_out)
        init_bias(self.last.bias, c * kh * kw)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, gC', H, W) -> (B, gN', H', W') -> (B, N, H', W')
        return self.last(self.core(self.first(x)))

    @property
    def ranks(self) -> tuple[int, int, int]:
        return (self.rank_out, self.rank_in, self.rank_spatial)

    @classmethod
    def space(cls, spec: ConvSpec) -> RankSpace:
        """Modes (out N/g, in C/g, spatial kh kw). Per group: params ``C C' + N' C' D' + D D' + N' N``;
        MACs ``H W C C' + H' W' kh kw g C' N' + g N' C' D' D + H' W' N' N`` (the rebuild once per call)."""
        if spec.kernel_size == (1, 1):
            raise ValueError("Tucker-3 needs a kernel larger than 1x1 (a spatial mode kh kw > 1 to factorize); "
                             "SVD handles 1x1 convs")
        g = spec.groups
        n, c, kh, kw = spec.weight_shape()
        n //= g
        d = kh * kw

        def macs(ranks: tuple[int, ...], shape: tuple[int, ...]) -> int:
            r_out, r_in, r_d = ranks
            h, w = shape[-2:]
            ho, wo = spec.output_size((h, w))
            return (h * w * g * c * r_in + ho * wo * g * d * r_in * r_out + g * r_out * r_in * r_d * d
                    + ho * wo * g * n * r_out)

        return RankSpace(
            "Tucker3Conv2d", (Mode("out", n), Mode("in", c), Mode("spatial", d)),
            params=lambda r: g * (c * r[1] + r[0] * r[1] * r[2] + d * r[2] + r[0] * n),
            macs=macs, dense_params=g * n * c * d, dense_macs=spec.macs,
            bias=spec.out_channels if spec.bias else 0, error_modes=3, per_group=g > 1)

    @classmethod
    def operands(cls, conv: nn.Conv2d) -> list[Tensor]:
        """Per group, the kernel block as the 3-way (N/g, C/g, kh kw) tensor, float64."""
        return [b.reshape(*b.shape[:2], -1) for b in as_float64(conv.weight).chunk(conv.groups, dim=0)]

    @classmethod
    def unfold(cls, block: Tensor) -> list[list[Tensor]]:
        """The three mode unfoldings: at full ranks HOOI is the HOSVD, whose core has these
        singular values per mode, so a rule on them is the project's "HOOI, then the singular values
        of each mode"."""
        return [[block.movedim(k, 0).reshape(block.shape[k], -1)] for k in range(3)]

    @classmethod
    def from_dense_at(cls, conv: nn.Conv2d, ranks: Ranks) -> "Tucker3Conv2d":
        """Decompose ``conv`` by HOOI on (N, C, kh kw) per group (float64), in ``conv``'s dtype and device."""
        check_finite("conv weight", conv.weight)
        layer = cls.empty_at(conv, ranks)._place(conv.weight)
        parts = [tucker3(block, layer.ranks) for block in cls.operands(conv)]  # (G, W_N, W_C, W_D) per group
        with torch.no_grad():
            layer.first.weight.copy_(torch.cat([w_c.T for _, _, w_c, _ in parts])[:, :, None, None])  # (gC', C/g)
            layer.core.core.copy_(torch.cat([g for g, _, _, _ in parts]))                          # (gN', C', D')
            layer.core.basis.copy_(torch.stack([w_d for _, _, _, w_d in parts]))                   # (g, D, D')
            layer.last.weight.copy_(torch.cat([w_n for _, w_n, _, _ in parts])[:, :, None, None])  # (N, N')
            if conv.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def dense_weight(self) -> Tensor:
        g = self.config.groups
        w_c = as_float64(self.first.weight)[:, :, 0, 0].chunk(g)  # g x (C', C/g)
        core = as_float64(self.core.core).chunk(g)               # g x (N', C', D')
        w_d = as_float64(self.core.basis)                        # (g, D, D')
        w_n = as_float64(self.last.weight)[:, :, 0, 0].chunk(g)   # g x (N/g, N')
        blocks = [tucker3_to_tensor(gc, wn, wc.T, wd) for gc, wn, wc, wd in zip(core, w_n, w_c, w_d)]
        return torch.cat(blocks).reshape(self.config.weight_shape())

    def extra_repr(self) -> str:
        s = self.config
        return (f"{s.in_channels}, {s.out_channels}, kernel_size={s.kernel_size}, ranks=(out={self.rank_out}, "
                f"in={self.rank_in}, spatial={self.rank_spatial}), groups={s.groups}")
