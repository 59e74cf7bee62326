"""The geometry of a dense ``nn.Conv2d``, kept by every factorized conv so it can rebuild it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Union

import torch
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def weight_shape(self) -> tuple[int, int, int, int]:
        """(N, C/g, kh, kw)."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)


def dense_conv(spec: ConvSpec, weight: torch.Tensor, bias: torch.Tensor | None,
               like: torch.Tensor) -> nn.Conv2d:
    """An ``nn.Conv2d`` with ``spec`` holding ``weight``/``bias`` cast to ``like``'s dtype/device."""
    conv = spec.make().to(device=like.device, dtype=like.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv
