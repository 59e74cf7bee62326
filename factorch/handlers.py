"""Which layers each method applies to, and at which ranks: one handler per (method, layer type)."""
from __future__ import annotations

from torch import nn

from factorch.layers import CPConv2d, SVDConv2d, SVDLinear, TTConv2d, TTLinear, TuckerConv2d
from factorch.methods import CP, SVD, TT, Method, Tucker2
from factorch.registry import NotApplicable, Proposal, Skip, register


def _spatial_conv_skip(conv: nn.Conv2d, method: str) -> NotApplicable | None:
    if conv.kernel_size == (1, 1):
        return NotApplicable(f"1x1 conv: {method} needs a kernel larger than 1x1 (SVD handles 1x1)")
    if conv.in_channels // conv.groups == 1:
        if conv.groups > 1:
            return NotApplicable("depthwise conv: one input channel per group, nothing to factor")
        return NotApplicable("one input channel (e.g. a grayscale first conv): nothing to factor on the input mode")
    return None


def _rank_zero(method: Method, ranks: tuple[int, ...]) -> Skip | None:
    if min(ranks) == 0:
        return Skip(f"rank 0 from {method.rank!r} (the weights look like noise)")
    return None


def _spatial_conv(method: Method, conv: nn.Conv2d, layer_cls, label: str, **kwargs) -> Proposal | Skip | NotApplicable:
    """Tucker-2 and CP: kxk convs with more than one input channel per group."""
    skip = _spatial_conv_skip(conv, label)
    if skip:
        return skip
    ranks = layer_cls.resolve_rank(conv, method.rank)
    return _rank_zero(method, ranks) or Proposal(layer_cls, ranks, kwargs)


@register(Tucker2, nn.Conv2d)
def tucker2_conv(method: Tucker2, conv: nn.Conv2d) -> Proposal | Skip | NotApplicable:
    return _spatial_conv(method, conv, TuckerConv2d, "Tucker-2")


@register(CP, nn.Conv2d)
def cp_conv(method: CP, conv: nn.Conv2d) -> Proposal | Skip | NotApplicable:
    return _spatial_conv(method, conv, CPConv2d, "CP", restarts=method.restarts)


@register(SVD, nn.Conv2d)
def svd_conv(method: SVD, conv: nn.Conv2d) -> Proposal | Skip | NotApplicable:
    if conv.kernel_size != (1, 1):
        return NotApplicable(f"{conv.kernel_size[0]}x{conv.kernel_size[1]} conv: SVD handles 1x1 convs only")
    ranks = SVDConv2d.resolve_rank(conv, method.rank)
    return _rank_zero(method, ranks) or Proposal(SVDConv2d, ranks)


@register(SVD, nn.Linear)
def svd_linear(method: SVD, linear: nn.Linear) -> Proposal | Skip:
    ranks = SVDLinear.resolve_rank(linear, method.rank)
    return _rank_zero(method, ranks) or Proposal(SVDLinear, ranks)


@register(TT, nn.Linear)
def tt_linear(method: TT, linear: nn.Linear) -> Proposal | Skip:
    ranks = TTLinear.resolve_rank(linear, method.rank)
    return _rank_zero(method, ranks) or Proposal(TTLinear, ranks)


@register(TT, nn.Conv2d)
def tt_conv(method: TT, conv: nn.Conv2d) -> Proposal | Skip | NotApplicable:
    if conv.groups != 1:
        return NotApplicable(f"grouped conv (groups={conv.groups}): TT-conv handles groups=1 only")
    ranks = TTConv2d.resolve_rank(conv, method.rank, order=method.conv_order)
    return _rank_zero(method, ranks) or Proposal(TTConv2d, ranks, options={"order": method.conv_order})
