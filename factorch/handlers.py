"""Which layers each method applies to: one handler per (method, layer type).

A handler only says whether its method applies and with which factorized class; ranks, costs and
skips are decided by ``factorch.registry.decide`` from the class's rank space.
"""
from __future__ import annotations

import math

from torch import nn

from factorch.layers import CPConv, SVDConv, SVDLinear, SVDMultiheadAttention, Tucker3Conv, TTConv, TTLinear, TuckerConv
from factorch.layers.conv_spec import CONVS, ConvSpec, kernel_text
from factorch.methods import CP, SVD, TT, Tucker2, Tucker3
from factorch.registry import Candidate, NotApplicable, register

# Every conv handler takes nn.Conv1d/2d/3d and nn.ConvTranspose1d/2d/3d (``CONVS``): the layer
# classes are N-d and read the dimensionality and transposition from the conv's ``ConvSpec``.


def spatial_conv_skip(conv: nn.Module, method: str) -> NotApplicable | None:
    """Why a method over the k kernel of a conv does not apply to ``conv`` (None: it does)."""
    spec = ConvSpec.of(conv)
    if math.prod(spec.kernel_size) == 1:
        return NotApplicable(f"{kernel_text(spec)} conv: {method} needs a kernel larger than 1x1 (SVD handles 1x1)")
    if conv.in_channels // conv.groups == 1:
        if conv.groups > 1:
            return NotApplicable("depthwise conv: one input channel per group, nothing to factor")
        return NotApplicable("one input channel (e.g. a grayscale first conv): nothing to factor on the input mode")
    return None


@register(Tucker2, *CONVS)
def tucker2_conv(method: Tucker2, conv: nn.Module) -> Candidate | NotApplicable:
    return spatial_conv_skip(conv, "Tucker-2") or Candidate(TuckerConv)


@register(Tucker3, *CONVS)
def tucker3_conv(method: Tucker3, conv: nn.Module) -> Candidate | NotApplicable:
    return spatial_conv_skip(conv, "Tucker-3") or Candidate(Tucker3Conv)


@register(CP, *CONVS)
def cp_conv(method: CP, conv: nn.Module) -> Candidate | NotApplicable:
    return spatial_conv_skip(conv, "CP") or Candidate(CPConv, kwargs={"restarts": method.restarts})


@register(SVD, *CONVS)
def svd_conv(method: SVD, conv: nn.Module) -> Candidate | NotApplicable:
    spec = ConvSpec.of(conv)
    if math.prod(spec.kernel_size) != 1:
        return NotApplicable(f"{kernel_text(spec)} conv: SVD handles 1x1 convs only (pointwise: 1x1, k1, 1x1x1)")
    return Candidate(SVDConv)


@register(SVD, nn.Linear)
def svd_linear(method: SVD, linear: nn.Linear) -> Candidate:
    return Candidate(SVDLinear)


@register(SVD, nn.MultiheadAttention)
def svd_attention(method: SVD, attention: nn.MultiheadAttention) -> Candidate:
    """The q, k, v and output projections, each by its truncated SVD (weight-only under calibration)."""
    return Candidate(SVDMultiheadAttention)


@register(TT, nn.Linear)
def tt_linear(method: TT, linear: nn.Linear) -> Candidate:
    return Candidate(TTLinear)


@register(TT, *CONVS)
def tt_conv(method: TT, conv: nn.Module) -> Candidate | NotApplicable:
    if conv.groups != 1:
        return NotApplicable(f"grouped conv (groups={conv.groups}): TT-conv handles groups=1 only (its cores split "
                             "the channel modes, which a per-group kernel does not factor into)")
    return Candidate(TTConv, options={"order": method.conv_order})
