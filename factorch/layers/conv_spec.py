"""The geometry of a dense ``nn.Conv2d``, kept by every factorized conv so it can rebuild it."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

Padding = Union[str, tuple[int, int]]


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class ConvSpec:
    """Everything ``nn.Conv2d`` takes except the weights: channels, kernel, stride, padding
    (``'same'``/``'valid'`` or per-axis ints), dilation, groups, bias, padding_mode."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: Padding = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"

    @classmethod
    def create(cls, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
               dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros") -> "ConvSpec":
        """Normalise ``nn.Conv2d``-style arguments (ints or pairs) to a spec."""
        return cls(int(in_channels), int(out_channels), _pair(kernel_size), _pair(stride),
                   padding if isinstance(padding, str) else _pair(padding), _pair(dilation),
                   int(groups), bool(bias), str(padding_mode))

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "ConvSpec":
        return cls.create(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                          conv.padding_mode)

    def make(self, **overrides: Any) -> nn.Conv2d:
        """A new ``nn.Conv2d`` with this geometry, any field replaced by ``overrides``."""
        s = replace(self, **overrides)
        return nn.Conv2d(s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding,
                         s.dilation, s.groups, s.bias, s.padding_mode)

    def split_axes(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Geometry of the (kh x 1) and (1 x kw) convs whose chain equals this conv's sampling.

        Height stride/padding/dilation go to the vertical conv, width ones to the horizontal
        conv; ``'same'``/``'valid'`` stay strings (PyTorch pads a size-1 axis by 0 under both).
        """
        kh, kw = self.kernel_size
        if isinstance(self.padding, str):
            pad_v = pad_h = self.padding
        else:
            pad_v, pad_h = (self.padding[0], 0), (0, self.padding[1])
        vertical = dict(kernel_size=(kh, 1), stride=(self.stride[0], 1), padding=pad_v,
                        dilation=(self.dilation[0], 1))
        horizontal = dict(kernel_size=(1, kw), stride=(1, self.stride[1]), padding=pad_h,
                          dilation=(1, self.dilation[1]))
        return vertical, horizontal

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``F.conv2d`` of ``x`` with ``weight`` under this geometry, padding modes included: what
        ``nn.Conv2d`` does with a weight it does not hold (e.g. one rebuilt from factors per call)."""
        if self.padding_mode == "zeros":
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return F.conv2d(F.pad(x, self.explicit_padding(), mode=self.padding_mode), weight, bias, self.stride, 0,
                        self.dilation, self.groups)

    def explicit_padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) as ``F.pad`` takes it; ``'same'`` pads ``d (k - 1)`` per axis,
        the smaller half first (PyTorch's convention)."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            (th, tw) = (d * (k - 1) for d, k in zip(self.dilation, self.kernel_size))
            return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def smallest_input(self, like: torch.Tensor) -> torch.Tensor:
        """A zero ``(1, C, side, side)`` input just large enough for the kernel, the padding and the
        stride (what a trace of a layer with this geometry is taken on)."""
        pads = [0, 0] if isinstance(self.padding, str) else list(self.padding)
        side = max(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size)) + 2 * max(pads) + max(self.stride)
        return like.new_zeros(1, self.in_channels, side, side)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``H' = floor((H + 2 p - d (k - 1) - 1) / s) + 1`` per axis (``docs/math.md``, "Conventions");
        ``'same'`` keeps the size, ``'valid'`` pads 0."""
        if self.padding == "same":
            return tuple(size)
        pad = (0, 0) if self.padding == "valid" else self.padding
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                     for n, k, s, p, d in zip(size, self.kernel_size, self.stride, pad, self.dilation))

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """The dense conv's MACs for one ``(C, H, W)`` input: ``H' W' N (C/g) kh kw``."""
        h, w = self.output_size(tuple(input_shape[-2:]))
        return h * w * self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel_size)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def weight_shape(self) -> tuple[int, int, int, int]:
        """(N, C/g, kh, kw)."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)


@dataclass(frozen=True)
class LinearSpec:
    """Everything ``nn.Linear`` takes except the weights."""

    in_features: int
    out_features: int
    bias: bool = True

    @classmethod
    def of(cls, linear: nn.Linear) -> "LinearSpec":
        return cls(int(linear.in_features), int(linear.out_features), linear.bias is not None)

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """The dense layer's MACs for one ``(..., C)`` input: ``rows C N``."""
        return math.prod(input_shape[:-1]) * self.in_features * self.out_features

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dense_conv(spec: ConvSpec, weight: torch.Tensor, bias: torch.Tensor | None,
               like: torch.Tensor) -> nn.Conv2d:
    """An ``nn.Conv2d`` with ``spec`` holding ``weight``/``bias`` cast to ``like``'s dtype/device."""
    conv = spec.make().to(device=like.device, dtype=like.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv
