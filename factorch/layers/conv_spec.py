"""The geometry of a dense convolution of any dimensionality, plain or transposed, described once.

Every factorized conv keeps the dense layer's ``ConvSpec`` and builds its factor convs from it:
``make`` (the kxk core: ``nn.Conv{1,2,3}d`` or ``nn.ConvTranspose{1,2,3}d`` with the original
stride, padding, dilation, output_padding, groups, padding_mode), ``pointwise`` (the 1x1 factors,
plain convs of the same dimensionality), ``split_axes`` (CP's one-axis convs). ``as_kernel`` /
``as_weight`` convert between a layer's weight and the kernel every decomposition reads,
``(N, C/g, *k)``: output channels first, as a plain conv holds it (a transposed conv holds
``(C, N/g, *k)``; ``docs/math.md``, "Conventions").
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

Padding = Union[str, tuple[int, ...]]
Ints = Union[int, Sequence[int]]

# the PyTorch modules of each (transposed, dims): what ``make`` builds and the handlers register for
CONV_TYPES: dict[tuple[bool, int], type[_ConvNd]] = {
    (False, 1): nn.Conv1d, (False, 2): nn.Conv2d, (False, 3): nn.Conv3d,
    (True, 1): nn.ConvTranspose1d, (True, 2): nn.ConvTranspose2d, (True, 3): nn.ConvTranspose3d}
CONVS: tuple[type[_ConvNd], ...] = tuple(CONV_TYPES.values())
_F_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_F_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _per_axis(v: Ints, dims: int, name: str) -> tuple[int, ...]:
    if isinstance(v, int):
        return (int(v),) * dims
    t = tuple(int(x) for x in v)
    if len(t) != dims:
        raise ValueError(f"conv {name} {tuple(v)} has {len(t)} values for a {dims}-d kernel")
    return t


def _dims(*values: Any, default: int = 2) -> int:
    """The number of spatial axes: the length of the first per-axis tuple given, else ``default``."""
    return next((len(v) for v in values if isinstance(v, (tuple, list))), default)


@dataclass(frozen=True)
class ConvSpec:
    """Everything ``nn.Conv{1,2,3}d`` / ``nn.ConvTranspose{1,2,3}d`` take except the weights:
    channels, kernel, stride, padding (``'same'``/``'valid'`` or per-axis ints), dilation, groups,
    bias, padding_mode; ``transposed`` and its per-axis ``output_padding`` (empty for a plain conv).
    The number of spatial axes is ``len(kernel_size)``."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...] = (1, 1)
    padding: Padding = (0, 0)
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    transposed: bool = False
    output_padding: tuple[int, ...] = ()

    @classmethod
    def create(cls, in_channels: int, out_channels: int, kernel_size: Ints, stride: Ints = 1, padding: Any = 0,
               dilation: Ints = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
               transposed: bool = False, output_padding: Ints = 0) -> "ConvSpec":
        """Normalise ``nn.Conv*``-style arguments (ints or per-axis tuples) to a spec. The number of
        spatial axes is the length of any tuple given (kernel, stride, padding, dilation,
        output_padding); all ints mean 2-D (the ``nn.Conv2d`` signature the 2-D classes had)."""
        d = _dims(kernel_size, stride, padding, dilation, output_padding)
        pad = padding if isinstance(padding, str) else _per_axis(padding, d, "padding")
        if transposed and isinstance(pad, str):
            raise ValueError(f"a transposed conv takes int padding, got {padding!r}")
        return cls(int(in_channels), int(out_channels), _per_axis(kernel_size, d, "kernel_size"),
                   _per_axis(stride, d, "stride"), pad, _per_axis(dilation, d, "dilation"), int(groups), bool(bias),
                   str(padding_mode), bool(transposed),
                   _per_axis(output_padding, d, "output_padding") if transposed else ())

    @classmethod
    def of(cls, conv: nn.Module) -> "ConvSpec":
        """The spec of any ``nn.Conv{1,2,3}d`` / ``nn.ConvTranspose{1,2,3}d``."""
        if not isinstance(conv, _ConvNd):
            raise ValueError(f"expected a convolution (nn.Conv1d/2d/3d or nn.ConvTranspose1d/2d/3d), got "
                             f"{type(conv).__name__}")
        return cls.create(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, conv.transposed,
                          conv.output_padding)

    @property
    def dims(self) -> int:
        """Spatial axes: 1 (``Conv1d``), 2 or 3."""
        return len(self.kernel_size)

    @property
    def module_type(self) -> type[_ConvNd]:
        return CONV_TYPES[(self.transposed, self.dims)]

    def make(self, **overrides: Any) -> _ConvNd:
        """A new conv module with this geometry (plain or transposed, of this dimensionality), any
        field replaced by ``overrides``."""
        s = replace(self, **overrides)
        if s.transposed:
            return s.module_type(s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding, s.output_padding,
                                 s.groups, s.bias, s.dilation, s.padding_mode)
        return s.module_type(s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding, s.dilation,
                             s.groups, s.bias, s.padding_mode)

    def pointwise(self, in_channels: int, out_channels: int, groups: int = 1, bias: bool = False) -> _ConvNd:
        """A plain 1x1 (1x1x1, k1) conv of this dimensionality: the channel factors of every method,
        also around a transposed core (a per-pixel channel map commutes with any conv's sampling)."""
        return CONV_TYPES[(False, self.dims)](in_channels, out_channels, 1, groups=groups, bias=bias)

    def split_axes(self) -> list[dict[str, Any]]:
        """Per spatial axis, the geometry of the one-axis conv (kernel ``k_a`` on axis a, 1 elsewhere)
        whose chain over the axes equals this conv's sampling: each carries its axis's stride,
        padding, dilation and output_padding (0/1 on the others). ``'same'``/``'valid'`` stay strings
        (PyTorch pads a size-1 axis by 0 under both). ``docs/math.md``, "CP convolution"."""
        d = self.dims
        out = []
        for a in range(d):
            one = lambda v, rest: tuple(v[a] if i == a else rest for i in range(d))  # noqa: E731
            geometry = dict(kernel_size=one(self.kernel_size, 1), stride=one(self.stride, 1),
                            padding=self.padding if isinstance(self.padding, str) else one(self.padding, 0),
                            dilation=one(self.dilation, 1))
            if self.transposed:
                geometry["output_padding"] = one(self.output_padding, 0)
            out.append(geometry)
        return out

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The functional conv of ``x`` with ``weight`` (in this layer's layout, ``weight_shape``) under
        this geometry, padding modes included: what the module does with a weight it does not hold
        (e.g. one rebuilt from factors at each call)."""
        if self.transposed:
            return _F_CONV_T[self.dims](x, weight, bias, self.stride, self.padding, self.output_padding, self.groups,
                                        self.dilation)
        if self.padding_mode == "zeros":
            return _F_CONV[self.dims](x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return _F_CONV[self.dims](F.pad(x, self.explicit_padding(), mode=self.padding_mode), weight, bias,
                                  self.stride, 0, self.dilation, self.groups)

    def axis_padding(self) -> tuple[tuple[int, int], ...]:
        """(before, after) per axis of a plain conv; ``'same'`` pads ``d (k - 1)`` per axis, the smaller
        half first (PyTorch's convention); ``'valid'`` nothing."""
        if self.padding == "valid":
            return ((0, 0),) * self.dims
        if self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return tuple((t // 2, t - t // 2) for t in totals)
        return tuple((p, p) for p in self.padding)

    def explicit_padding(self) -> tuple[int, ...]:
        """The padding as ``F.pad`` takes it: last axis first, (before, after) each."""
        return tuple(v for pair in reversed(self.axis_padding()) for v in pair)

    def smallest_input(self, like: torch.Tensor) -> torch.Tensor:
        """A zero ``(1, C, side, ..., side)`` input just large enough for the kernel, the padding and the
        stride (what a trace of a layer with this geometry is taken on)."""
        pads = [0] if isinstance(self.padding, str) else list(self.padding)
        side = max(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size)) + 2 * max(pads) + max(self.stride)
        return like.new_zeros(1, self.in_channels, *(side,) * self.dims)

    def output_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """Per axis ``H' = floor((H + 2 p - d (k - 1) - 1) / s) + 1`` (``'same'`` keeps the size,
        ``'valid'`` pads 0); transposed ``H' = (H - 1) s - 2 p + d (k - 1) + output_padding + 1``
        (``docs/math.md``, "Conventions")."""
        size = tuple(size)[-self.dims:]
        if self.transposed:
            return tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, k, s, p, d, op in
                         zip(size, self.kernel_size, self.stride, self.padding, self.dilation, self.output_padding))
        if self.padding == "same":
            return size
        return tuple((n + sum(p) - d * (k - 1) - 1) // s + 1
                     for n, k, s, p, d in zip(size, self.kernel_size, self.stride, self.axis_padding(), self.dilation))

    def macs(self, input_shape: Sequence[int]) -> int:
        """The dense conv's MACs for one ``(C, *spatial)`` input (``docs/math.md``, "Counting
        multiply-adds"): ``out_elements (C/g) prod(k)``; transposed ``in_elements (N/g) prod(k)``."""
        k, g = math.prod(self.kernel_size), self.groups
        if self.transposed:
            return math.prod(tuple(input_shape)[-self.dims:]) * self.in_channels * (self.out_channels // g) * k
        return math.prod(self.output_size(input_shape)) * self.out_channels * (self.in_channels // g) * k

    def as_dict(self) -> dict[str, Any]:
        """Constructor keyword arguments of the factorized layers; a plain conv's omit ``transposed``
        and ``output_padding``, so its dict is the one the 2-D layers always stored (checkpoints)."""
        d = asdict(self)
        if not self.transposed:
            del d["transposed"], d["output_padding"]
        return d

    def weight_shape(self) -> tuple[int, ...]:
        """The module's weight: ``(N, C/g, *k)``; transposed ``(C, N/g, *k)``."""
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def kernel_shape(self) -> tuple[int, ...]:
        """The kernel every decomposition reads, ``(N, C/g, *k)`` (``as_kernel``)."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def fan_in(self) -> int:
        """PyTorch's fan-in of the module's weight, ``prod(weight_shape[1:])`` (``(N/g) prod(k)`` for a
        transposed conv): its default init has variance ``1 / (3 fan_in)``, its bias bound ``1/sqrt(fan_in)``."""
        return math.prod(self.weight_shape()[1:])

    def as_kernel(self, weight: torch.Tensor) -> torch.Tensor:
        """A weight of this layout -> the kernel ``(N, C/g, *k)``, group ``q`` in rows
        ``q N/g .. (q+1) N/g``: a transposed conv's ``(C, N/g, *k)`` has input channels first."""
        if not self.transposed:
            return weight
        g, k = self.groups, weight.shape[2:]
        return weight.reshape(g, -1, *weight.shape[1:]).transpose(1, 2).reshape(-1, weight.shape[0] // g, *k)

    def as_weight(self, kernel: torch.Tensor) -> torch.Tensor:
        """Inverse of ``as_kernel``: the kernel ``(N, C/g, *k)`` -> this layout's weight."""
        if not self.transposed:
            return kernel
        g, k = self.groups, kernel.shape[2:]
        return kernel.reshape(g, -1, *kernel.shape[1:]).transpose(1, 2).reshape(-1, kernel.shape[0] // g, *k)


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


def kernel_text(spec: ConvSpec) -> str:
    """``3x3`` / ``3x3x3`` / ``k5`` (a 1-D kernel): the kernel in messages and labels."""
    return f"k{spec.kernel_size[0]}" if spec.dims == 1 else "x".join(map(str, spec.kernel_size))


def dense_conv(spec: ConvSpec, weight: torch.Tensor, bias: torch.Tensor | None, like: torch.Tensor) -> _ConvNd:
    """The conv module of ``spec`` holding ``weight`` (its layout) and ``bias``, cast to ``like``'s
    dtype/device."""
    conv = spec.make().to(device=like.device, dtype=like.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv
