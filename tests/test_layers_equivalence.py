"""Every factorized conv equals conv2d with the kernel rebuilt from its factors, over a grid of
kernel sizes, strides, paddings (per-axis and 'same'), dilations, groups and bias; fp64 to 1e-10.
The reference pads explicitly and calls F.conv2d, independent of the layers' own code."""
import itertools

import pytest
import torch

from factorch.layers import CPConv2d, SVDConv2d, TuckerConv2d
from tests.conftest import conv_reference

KERNELS = [1, 3, 5, (1, 7)]
STRIDES = [1, 2, (2, 1)]
PADDINGS = [0, 1, 2, (1, 0), "same"]
DILATIONS = [1, 2]
GROUPS = [1, 4]
BIASES = [True, False]

GRID = [
    (k, s, p, d, g, b)
    for k, s, p, d, g, b in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS, GROUPS, BIASES)
    if not (p == "same" and s != 1)  # PyTorch refuses 'same' with stride > 1
]
C_IN, C_OUT = 8, 12


def _random_layer(cls, kernel, stride, padding, dilation, groups, bias, rank, padding_mode="zeros"):
    layer = cls(C_IN, C_OUT, kernel, rank=rank, stride=stride, padding=padding, dilation=dilation,
                groups=groups, bias=bias, padding_mode=padding_mode).double()
    with torch.no_grad():  # random factors and bias, not a decomposition
        for p in layer.parameters():
            p.normal_()
    return layer


def _check(layer, batch=3, h=13, w=15):
    x = torch.randn(batch, C_IN, h, w, dtype=torch.float64)
    s = layer.config
    ref = conv_reference(x, layer.dense_weight(), s, layer.last.bias)
    out = layer(x)
    assert out.shape == ref.shape
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() <= 1e-10 * max(scale, 1.0)
    # to_dense() is the same function as the chain
    assert (layer.to_dense()(x) - out).abs().max().item() <= 1e-10 * max(scale, 1.0)


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,bias", GRID)
def test_tucker_chain_equals_rebuilt_conv(kernel, stride, padding, dilation, groups, bias):
    _check(_random_layer(TuckerConv2d, kernel, stride, padding, dilation, groups, bias, rank=(2, 1)))


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,bias", GRID)
def test_cp_chain_equals_rebuilt_conv(kernel, stride, padding, dilation, groups, bias):
    _check(_random_layer(CPConv2d, kernel, stride, padding, dilation, groups, bias, rank=2))


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,bias", [g for g in GRID if g[0] == 1])
def test_svd_conv_chain_equals_rebuilt_conv(kernel, stride, padding, dilation, groups, bias):
    _check(_random_layer(SVDConv2d, kernel, stride, padding, dilation, groups, bias, rank=2))


@pytest.mark.parametrize("cls,rank", [(TuckerConv2d, (3, 2)), (CPConv2d, 4)])
@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding,stride", [(1, 1), ((2, 1), (2, 1)), ("same", 1)])
def test_padding_modes(cls, rank, padding_mode, padding, stride):
    _check(_random_layer(cls, 3, stride, padding, 1, 1, True, rank, padding_mode))


def test_zero_padding_border_pixels_with_bias():
    """A bias anywhere but on the last factor makes border pixels wrong; check them explicitly."""
    layer = _random_layer(TuckerConv2d, 3, 1, 2, 1, 1, True, (4, 4))
    x = torch.randn(2, C_IN, 9, 9, dtype=torch.float64)
    ref = conv_reference(x, layer.dense_weight(), layer.config, layer.last.bias)
    out = layer(x)
    border = torch.ones_like(out, dtype=torch.bool)
    border[..., 2:-2, 2:-2] = False
    assert (out - ref)[border].abs().max() < 1e-10
