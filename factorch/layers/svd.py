"""Truncated-SVD layers: ``SVDLinear`` and ``SVDConv`` (pointwise convs of any dimensionality:
1x1, 1x1x1, k1; plain or transposed); ``docs/math.md``, "Truncated SVD".

``W (N, C) ~= A B`` with ``A = U_R sqrt(S_R)`` and ``B = sqrt(S_R) V_R^T``: ``first`` applies B (no
bias), ``last`` applies A and the original bias. The geometry goes on the factor at the smaller
resolution, where it costs least: for a plain pointwise conv the stride, padding and
``padding_mode`` go on ``first`` (pointwise maps commute with subsampling and with padding, and the
zero-padded border then gets exactly the bias, as in the dense conv); for a transposed one the
stride, padding and output_padding go on ``last``, a transposed pointwise conv (``first`` runs
on the input pixels, ``last`` scatters them, and every output pixel gets the bias as in the dense
layer).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from factorch.decompositions.svd import balanced_svd
from factorch.decompositions.svd_cost import svd_seconds
from factorch.layers.base import FactorizedConv, FactorizedLayer, alias, as_float64, check_finite, \
    default_variance, init_bias, init_uniform_, read_kernel, write_kernel
from factorch.layers.conv_spec import ConvSpec, LinearSpec
from factorch.rank import Mode, RankSpace
from factorch.rank.space import Ranks


def _init(first: Tensor, last: Tensor, bias: Tensor | None, c: int, rank: int, fan_in: int) -> None:
    """From scratch (zero-mean uniform factors): ``Var B = 1/C`` keeps the variance, ``Var A = 1/(3R)``: ``W = A B`` (a sum of R
    products) has ``Var = 1 / (3 C)``, PyTorch's default for the dense layer; times ``C / fan_in`` where
    PyTorch's fan-in is not C (a transposed conv's is N/g)."""
    init_uniform_(first, 1.0 / c)
    init_uniform_(last, default_variance(rank) * (c / fan_in))
    init_bias(bias, fan_in)


def _work(groups: int, n: int, c: int, rank: int) -> tuple[float, str]:
    """One-thread seconds and route of the truncated SVDs of ``groups`` (n, c) matrices at ``rank``."""
    seconds, route = svd_seconds((n, c), rank)
    return groups * seconds, f"{route} SVD"


class SVDLinear(FactorizedLayer):
    """``first`` Linear (C -> R, no bias), ``last`` Linear (R -> N, bias)."""

    input_factor = "first"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        (rank,) = self.space(LinearSpec(in_features, out_features, bias)).check(rank)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.last = nn.Linear(rank, out_features, bias=bias)
        self.reset_parameters()

    def init_factors(self) -> None:
        _init(self.first.weight, self.last.weight, self.last.bias, self.in_features, self.rank, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.first(x))  # (..., C) -> (..., R) -> (..., N)

    @property
    def ranks(self) -> tuple[int]:
        return (self.rank,)

    @classmethod
    def dense_config(cls, linear: nn.Linear) -> LinearSpec:
        return LinearSpec.of(linear)

    @classmethod
    def space(cls, spec: LinearSpec) -> RankSpace:
        """One mode (full ``min(N, C)``); params ``R (C + N)``, MACs ``rows R (C + N)``."""
        c, n = spec.in_features, spec.out_features
        return RankSpace("SVDLinear", (Mode("rank", min(n, c)),), params=lambda r: r[0] * (c + n),
                         macs=lambda r, shape: math.prod(shape[:-1]) * r[0] * (c + n),
                         dense_params=c * n, dense_macs=spec.macs, bias=n if spec.bias else 0,
                         work=lambda r: _work(1, n, c, r[0]))

    @classmethod
    def operands(cls, linear: nn.Linear) -> list[Tensor]:
        """The (N, C) weight, detached, in its own dtype: the SVD routes read it in float64 block by
        block, so no float64 copy of a large weight is held (``docs/math.md``, "Cost of computing a
        decomposition")."""
        return [linear.weight.detach()]

    @classmethod
    def unfold(cls, weight: Tensor) -> list[list[Tensor]]:
        return [[weight]]

    @classmethod
    def from_dense_at(cls, linear: nn.Linear, ranks: Ranks) -> "SVDLinear":
        check_finite("linear weight", linear.weight)
        layer = cls.empty_at(linear, ranks)._place(linear.weight)
        (weight,) = cls.operands(linear)
        a, b = balanced_svd(weight, layer.rank)
        with torch.no_grad():
            layer.first.weight.copy_(b)  # (R, C)
            layer.last.weight.copy_(a)   # (N, R)
            if linear.bias is not None:
                layer.last.bias.copy_(linear.bias)
        return layer.train(linear.training)

    def dense_weight(self) -> Tensor:
        return as_float64(self.last.weight) @ as_float64(self.first.weight)

    def to_dense(self) -> nn.Linear:
        w = self.last.weight
        dense = nn.Linear(self.in_features, self.out_features, bias=self.last.bias is not None)
        dense = dense.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.last.bias is not None:
                dense.bias.copy_(self.last.bias)
        return dense.train(self.training)

    def spec(self) -> dict[str, Any]:
        return {"config": {"in_features": self.in_features, "out_features": self.out_features,
                           "bias": self.last.bias is not None}, "rank": [self.rank]}

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}"


class SVDConv(FactorizedConv):
    """A pointwise conv (1x1, 1x1x1, k1; plain or transposed) as ``first`` (C -> gR) and ``last``
    (gR -> N, bias), per group; the stride/padding on ``first`` (plain) or ``last`` (transposed)."""

    input_factor = "first"

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, rank: int = 1, stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", transposed: bool = False, output_padding=0) -> None:
        super().__init__()
        self.config = spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation, groups, bias, padding_mode, transposed, output_padding)
        (rank,) = self.space(spec).check(rank)
        self.rank = rank
        g = spec.groups
        if spec.transposed:
            self.first = spec.pointwise(spec.in_channels, g * rank, groups=g)
            self.last = spec.make(in_channels=g * rank)
        else:
            self.first = spec.make(out_channels=g * rank, bias=False)
            self.last = spec.pointwise(g * rank, spec.out_channels, groups=g, bias=spec.bias)
        self.reset_parameters()

    def init_factors(self) -> None:
        s = self.config
        _init(self.first.weight, self.last.weight, self.last.bias, s.in_channels // s.groups, self.rank, s.fan_in)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.first(x))  # (B, C, *S) -> (B, gR, *S'') -> (B, N, *S')

    @property
    def ranks(self) -> tuple[int]:
        return (self.rank,)

    @classmethod
    def space(cls, spec: ConvSpec) -> RankSpace:
        """One mode (full ``min(N, C)`` per group); params ``g R (C/g + N/g)``; MACs ``P' R (C + N)``
        at the output positions ``P'`` (transposed: ``P R (C + N)`` at the input positions)."""
        if math.prod(spec.kernel_size) != 1:
            raise ValueError(f"{cls.__name__} takes pointwise convs only (1x1, 1x1x1, k1), got kernel "
                             f"{spec.kernel_size}")
        g = spec.groups
        n, c = spec.out_channels // g, spec.in_channels // g

        def macs(ranks: tuple[int, ...], shape: tuple[int, ...]) -> int:
            size = tuple(shape[-spec.dims:])
            positions = math.prod(size if spec.transposed else spec.output_size(size))
            return positions * g * ranks[0] * (c + n)

        return RankSpace(cls.__name__, (Mode("rank", min(n, c)),), params=lambda r: g * r[0] * (c + n),
                         macs=macs, dense_params=g * n * c, dense_macs=spec.macs,
                         bias=spec.out_channels if spec.bias else 0, per_group=g > 1,
                         work=lambda r: _work(g, n, c, r[0]))

    @classmethod
    def operands(cls, conv) -> list[Tensor]:
        """Per group, the (N/g, C/g) weight matrix (``ConvSpec.as_kernel``), float64."""
        return list(read_kernel(conv).flatten(1).chunk(conv.groups))

    @classmethod
    def unfold(cls, weight: Tensor) -> list[list[Tensor]]:
        return [[weight]]

    @classmethod
    def from_dense_at(cls, conv, ranks: Ranks) -> "SVDConv":
        check_finite("conv weight", conv.weight)
        layer = cls.empty_at(conv, ranks)._place(conv.weight)
        pairs = [balanced_svd(w, layer.rank) for w in cls.operands(conv)]
        ones = (1,) * layer.config.dims
        b, a = torch.cat([b for _, b in pairs]), torch.cat([a for a, _ in pairs])
        write_kernel(layer.first, b.reshape(*b.shape, *ones))  # (gR, C/g, 1..)
        write_kernel(layer.last, a.reshape(*a.shape, *ones))   # (N, R, 1..)
        if conv.bias is not None:
            with torch.no_grad():
                layer.last.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def dense_weight(self) -> Tensor:
        g = self.config.groups
        bs = read_kernel(self.first).flatten(1).chunk(g)  # g x (R, C/g)
        as_ = read_kernel(self.last).flatten(1).chunk(g)  # g x (N/g, R)
        kernel = torch.cat([a @ b for a, b in zip(as_, bs)])
        return self.config.as_weight(kernel.reshape(*kernel.shape, *(1,) * self.config.dims))

    def extra_repr(self) -> str:
        s = self.config
        kind = "transposed, " if s.transposed else ""
        return f"{s.in_channels}, {s.out_channels}, {kind}rank={self.rank}, stride={s.stride}, groups={s.groups}"


SVDConv2d = alias(SVDConv, "SVDConv2d")
