"""Which layers each method applies to: one handler per (method, layer type).

A handler only says whether its method applies and with which factorized class; ranks, costs and
skips are decided by ``factorch.registry.decide`` from the class's rank space.
"""
from __future__ import annotations

from torch import nn

from factorch.layers import CPConv2d, SVDConv2d, SVDLinear, SVDMultiheadAttention, Tucker3Conv2d, TTConv2d, TTLinear, \
    TuckerConv2d
from factorch.methods import CP, SVD, TT, Tucker2, Tucker3
from factorch.registry import Candidate, NotApplicable, register


def spatial_conv_skip(conv: nn.Conv2d, method: str) -> NotApplicable | None:
    """Why a method over the kxk kernel of a conv does not apply to ``conv`` (None: it does)."""
    if conv.kernel_size == (1, 1):
        return NotApplicable(f"1x1 conv: {method} needs a kernel larger than 1x1 (SVD handles 1x1)")
    if conv.in_channels // conv.groups == 1:
        if conv.groups > 1:
            return NotApplicable("depthwise conv: one input channel per group, nothing to factor")
        return NotApplicable("one input channel (e.g. a grayscale first conv): nothing to factor on the input mode")
    return None


@register(Tucker2, nn.Conv2d)
def tucker2_conv(method: Tucker2, conv: nn.Conv2d) -> Candidate | NotApplicable:
    return spatial_conv_skip(conv, "Tucker-2") or Candidate(TuckerConv2d)


@register(Tucker3, nn.Conv2d)
def tucker3_conv(method: Tucker3, conv: nn.Conv2d) -> Candidate | NotApplicable:
    return spatial_conv_skip(conv, "Tucker-3") or Candidate(Tucker3Conv2d)


@register(CP, nn.Conv2d)
def cp_conv(method: CP, conv: nn.Conv2d) -> Candidate | NotApplicable:
    return spatial_conv_skip(conv, "CP") or Candidate(CPConv2d, kwargs={"restarts": method.restarts})


@register(SVD, nn.Conv2d)
def svd_conv(method: SVD, conv: nn.Conv2d) -> Candidate | NotApplicable:
    if conv.kernel_size != (1, 1):
        return NotApplicable(f"{conv.kernel_size[0]}x{conv.kernel_size[1]} conv: SVD handles 1x1 convs only")
    return Candidate(SVDConv2d)


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


@register(TT, nn.Conv2d)
def tt_conv(method: TT, conv: nn.Conv2d) -> Candidate | NotApplicable:
    if conv.groups != 1:
        return NotApplicable(f"grouped conv (groups={conv.groups}): TT-conv handles groups=1 only")
    return Candidate(TTConv2d, options={"order": method.conv_order})
