"""Factorized layers: each holds its factors as real child modules and has ``from_dense()`` and
``to_dense()``. ``FactorizedLayer.registry`` maps class names to classes (used when loading)."""
from factorch.layers.attention import SVDMultiheadAttention
from factorch.layers.base import FactorizedLayer
from factorch.layers.conv_spec import ConvSpec
from factorch.layers.cp_conv import CPConv2d
from factorch.layers.svd import SVDConv2d, SVDLinear
from factorch.layers.tt_conv import TTConv2d
from factorch.layers.tt_linear import TTLinear
from factorch.layers.tucker3_conv import Tucker3Conv2d
from factorch.layers.tucker_conv import TuckerConv2d

__all__ = ["CPConv2d", "ConvSpec", "FactorizedLayer", "SVDConv2d", "SVDLinear", "SVDMultiheadAttention", "TTConv2d",
           "TTLinear", "Tucker3Conv2d", "TuckerConv2d"]
