"""Truncated-SVD layers: ``SVDLinear`` and ``SVDConv2d`` (1x1 convs); methods.md section 3.4.

``W (N, C) ~= A B`` with ``A = U_R sqrt(S_R)`` and ``B = sqrt(S_R) V_R^T``: ``first`` applies B (no
bias), ``last`` applies A and the original bias. For a 1x1 conv the stride, padding and
``padding_mode`` go on ``first``: pointwise maps commute with subsampling and with padding, and
the zero-padded border then gets exactly the bias, as in the dense conv.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from factorch.decompositions.svd import balanced_svd
from factorch.layers.base import FactorizedConv, FactorizedLayer, as_float64, check_finite
from factorch.layers.conv_spec import ConvSpec
from factorch.rank import RankSpec, resolve_rank


def _resolve(blocks_fn, n: int, c: int, rank: RankSpec) -> tuple[int]:
    """One rank for an (N, C) weight: rules on the weight itself; a fraction solves R (C + N) = f C N."""
    return resolve_rank(rank, (min(n, c),), lambda: [blocks_fn()], lambda f: (int(f * c * n / (c + n)),))


class SVDLinear(FactorizedLayer):
    """``first`` Linear (C -> R, no bias), ``last`` Linear (R -> N, bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        rank = int(rank[0]) if isinstance(rank, (tuple, list)) else int(rank)
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"SVD rank {rank} must be in [1, {min(in_features, out_features)}]")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.last = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.first(x))  # (..., C) -> (..., R) -> (..., N)

    @property
    def ranks(self) -> tuple[int]:
        return (self.rank,)

    @staticmethod
    def resolve_rank(linear: nn.Linear, rank: RankSpec) -> tuple[int]:
        return _resolve(lambda: [as_float64(linear.weight)], linear.out_features, linear.in_features, rank)

    @classmethod
    def empty_like(cls, linear: nn.Linear, rank: RankSpec) -> "SVDLinear":
        return cls(linear.in_features, linear.out_features, cls.resolve_rank(linear, rank)[0],
                   bias=linear.bias is not None)

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: RankSpec) -> "SVDLinear":
        check_finite("linear weight", linear.weight)
        layer = cls.empty_like(linear, rank)._place(linear.weight)
        a, b = balanced_svd(as_float64(linear.weight), layer.rank)
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


class SVDConv2d(FactorizedConv):
    """A 1x1 conv as ``first`` 1x1 (C -> gR, stride/padding) and ``last`` 1x1 (gR -> N, bias); per group."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, rank: int = 1, stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        self.config = spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation, groups, bias, padding_mode)
        if spec.kernel_size != (1, 1):
            raise ValueError(f"SVDConv2d takes 1x1 convs only, got kernel {spec.kernel_size}")
        rank = int(rank[0]) if isinstance(rank, (tuple, list)) else int(rank)
        n, c = spec.out_channels // spec.groups, spec.in_channels // spec.groups
        if not 1 <= rank <= min(n, c):
            raise ValueError(f"SVD rank {rank} must be in [1, {min(n, c)}] (per group)")
        self.rank = rank
        g = spec.groups
        self.first = spec.make(out_channels=g * rank, bias=False)
        self.last = nn.Conv2d(g * rank, spec.out_channels, 1, groups=g, bias=spec.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.first(x))  # (B, C, H, W) -> (B, gR, H', W') -> (B, N, H', W')

    @property
    def ranks(self) -> tuple[int]:
        return (self.rank,)

    @staticmethod
    def resolve_rank(conv: nn.Conv2d, rank: RankSpec) -> tuple[int]:
        g = conv.groups
        blocks = lambda: list(as_float64(conv.weight)[:, :, 0, 0].chunk(g))  # g x (N/g, C/g)
        return _resolve(blocks, conv.out_channels // g, conv.in_channels // g, rank)

    @classmethod
    def empty_like(cls, conv: nn.Conv2d, rank: RankSpec) -> "SVDConv2d":
        return cls(**ConvSpec.of(conv).as_dict(), rank=cls.resolve_rank(conv, rank)[0])

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, rank: RankSpec) -> "SVDConv2d":
        check_finite("conv weight", conv.weight)
        layer = cls.empty_like(conv, rank)._place(conv.weight)
        pairs = [balanced_svd(w, layer.rank)
                 for w in as_float64(conv.weight)[:, :, 0, 0].chunk(layer.config.groups)]
        with torch.no_grad():
            layer.first.weight.copy_(torch.cat([b for _, b in pairs])[:, :, None, None])  # (gR, C/g, 1, 1)
            layer.last.weight.copy_(torch.cat([a for a, _ in pairs])[:, :, None, None])   # (N, R, 1, 1)
            if conv.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def dense_weight(self) -> Tensor:
        g = self.config.groups
        bs = as_float64(self.first.weight)[:, :, 0, 0].chunk(g)  # g x (R, C/g)
        as_ = as_float64(self.last.weight)[:, :, 0, 0].chunk(g)  # g x (N/g, R)
        return torch.cat([a @ b for a, b in zip(as_, bs)])[:, :, None, None]



    def extra_repr(self) -> str:
        s = self.config
        return f"{s.in_channels}, {s.out_channels}, rank={self.rank}, stride={s.stride}, groups={s.groups}"
