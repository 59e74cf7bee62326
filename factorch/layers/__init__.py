"""Factorized layers: each holds its factors as real child modules and has ``from_dense()`` and
``to_dense()``. ``FactorizedLayer.registry`` maps class names to classes (used when loading).

The conv layers (``TuckerConv``, ``CPConv``, ``Tucker3Conv``, ``SVDConv``, ``TTConv``) take every
conv dimensionality, plain or transposed, as their ``ConvSpec`` says; ``TuckerConv2d`` and the
other ``...Conv2d`` names of the 2-D-only classes they generalised are the same classes (and the
names old checkpoints load by).
"""
from factorch.layers.attention import SVDMultiheadAttention
from factorch.layers.base import FactorizedLayer
from factorch.layers.conv_spec import ConvSpec
from factorch.layers.cp_conv import CPConv, CPConv2d
from factorch.layers.svd import SVDConv, SVDConv2d, SVDLinear
from factorch.layers.tt_conv import TTConv, TTConv2d
from factorch.layers.tt_linear import TTLinear
from factorch.layers.tucker3_conv import Tucker3Conv, Tucker3Conv2d
from factorch.layers.tucker_conv import TuckerConv, TuckerConv2d

__all__ = ["CPConv", "CPConv2d", "ConvSpec", "FactorizedLayer", "SVDConv", "SVDConv2d", "SVDLinear",
           "SVDMultiheadAttention", "TTConv", "TTConv2d", "TTLinear", "Tucker3Conv", "Tucker3Conv2d", "TuckerConv",
           "TuckerConv2d"]
