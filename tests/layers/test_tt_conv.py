"""TTConv2d in both orders, what the generic tests (test_layers_generic.py) do not cover: other channel
factorizations, the tolerance bound, count against hand-computed MACs (the examples of docs/math.md,
"TT convolution", included), bad arguments."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers import ConvSpec, TTConv2d
from factorch.rank import resolve
from tests.conftest import conv_reference

ORDERS = ["efficient", "conventional"]
C_IN, C_OUT = 12, 8  # 12 = 4 x 3 and 8 = 4 x 2: unequal, non-square factors


def _random(order, kernel, stride=1, padding=0, dilation=1, bias=True, rank=3, padding_mode="zeros", **kw):
    spec = ConvSpec.create(C_IN, C_OUT, kernel, stride, padding, dilation, 1, bias, padding_mode)
    ranks = resolve(rank, TTConv2d.space(spec, order=order, **kw)).ranks  # an int: capped per bond
    layer = TTConv2d(C_IN, C_OUT, kernel, ranks, stride, padding, dilation, bias=bias,
                     padding_mode=padding_mode, order=order, **kw).double()
    with torch.no_grad():  # random cores and bias, not a decomposition
        for p in layer.parameters():
            p.normal_()
    return layer


def _check(layer, batch=3, h=13, w=15):
    x = torch.randn(batch, layer.config.in_channels, h, w, dtype=torch.float64)
    ref = conv_reference(x, layer.dense_weight(), layer.config, layer.bias)
    out = layer(x)
    assert out.shape == ref.shape
    scale = max(ref.abs().max().item(), 1.0)
    assert (out - ref).abs().max().item() <= 1e-10 * scale
    assert (layer.to_dense()(x) - out).abs().max().item() <= 1e-10 * scale


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("in_shape,out_shape", [((2, 3, 2), (2, 2, 2)), ((12,), (8,)), ((3, 4), (2, 4))])
def test_other_channel_factorizations(order, in_shape, out_shape):
    _check(_random(order, 3, 2, 1, in_shape=in_shape, out_shape=out_shape, rank=4))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("eps", [0.6, 0.3, 0.1])
def test_tolerance_bound(order, eps):
    conv = nn.Conv2d(16, 16, 3).double()
    layer = TTConv2d.from_dense(conv, fc.Tolerance(eps), order=order)
    w = conv.weight.detach()
    assert float((layer.dense_weight() - w).norm() / w.norm()) <= eps + 1e-12


def _count(layer, c, h, w):
    return fc.count(layer, torch.zeros(2, c, h, w))


def test_count_efficient_order_by_hand():
    """Chain (u2, u1, s, c1, c2) = (4, 2, 9, 4, 3), ranks (1, a1, a0, b0, b1, 1) = (1, 3, 5, 4, 2, 1)."""
    layer = TTConv2d(12, 8, 3, rank=(3, 5, 4, 2), stride=2, padding=1, in_shape=(4, 3), out_shape=(2, 4))
    h, w, ho, wo = 15, 12, 8, 6
    macs = (h * w * 12 * 2 * 1       # input core c2: HW (c1 c2) b1 b2
            + h * w * 4 * 2 * 4      # input core c1: HW c1 b1 b0
            + ho * wo * 9 * 4 * 5    # the one 3x3 conv, stride 2: H'W' s b0 a0
            + ho * wo * 2 * 5 * 3    # output core u1: H'W' u1 a0 a1
            + ho * wo * 8 * 3 * 1)   # output core u2: H'W' (u1 u2) a1 a2
    counts = _count(layer, 12, h, w)
    assert counts.macs == macs
    assert counts.params == 1 * 4 * 3 + 3 * 2 * 5 + 5 * 9 * 4 + 4 * 4 * 2 + 2 * 3 * 1 + 8


def test_count_conventional_order_by_hand():
    """Chain (s, c1 n1, c2 n2) = (9, 4*2, 3*4), ranks (r0, r1) = (5, 3)."""
    layer = TTConv2d(12, 8, 3, rank=(5, 3), stride=2, padding=1, in_shape=(4, 3), out_shape=(2, 4),
                     order="conventional")
    ho, wo = 8, 6
    macs = (ho * wo * 9 * 12 * 5          # every input channel against r0 spatial filters
            + ho * wo * 3 * 4 * 5 * 2 * 3  # core 1: H'W' (c2) c1 r0 n1 r1
            + ho * wo * 2 * 3 * 3 * 4 * 1)  # core 2: H'W' (n1) c2 r1 n2 r2
    counts = _count(layer, 12, 15, 12)
    assert counts.macs == macs
    assert counts.params == 9 * 5 + 5 * 8 * 3 + 3 * 12 + 8


def test_the_documented_256_channel_examples():
    """docs/math.md, "TT convolution": 256 = 16 x 16 channels, 14x14, 3x3. Efficient, ranks [1, 16, 96, 96, 16, 1]:
    4.4x fewer params, 27.5 M MACs against 116 M dense. Conventional: r0 = 27 (an earlier example) exceeds
    the spatial mode (9 = the bond's full rank, refused here), so r0 = 9, r1 = 27: 8.5x fewer params
    and still 221 M MACs, 1.9x the dense conv."""
    x = torch.zeros(1, 256, 14, 14, device="meta")
    with torch.device("meta"):
        dense = nn.Conv2d(256, 256, 3, padding=1, bias=False)
        conv = TTConv2d(256, 256, 3, (9, 27), padding=1, bias=False, order="conventional")
        eff = TTConv2d(256, 256, 3, (16, 96, 96, 16), padding=1, bias=False)
    d, c, e = (fc.count(m, x) for m in (dense, conv, eff))
    assert d.macs == 14 * 14 * 9 * 256 * 256 == 115_605_504
    assert c.macs == 14 * 14 * (9 * 256 * 9 + 16 * 16 * 9 * 16 * 27 + 16 * 16 * 27 * 16) == 220_824_576
    assert e.macs == 14 * 14 * (256 * 16 + 16 * 16 * 96 + 9 * 96 * 96 + 96 * 16 * 16 + 256 * 16) == 27_496_448
    assert round(d.params / c.params, 2) == 8.52 and round(d.params / e.params, 2) == 4.45
    with pytest.raises(ValueError, match="exceeds the full rank"):
        TTConv2d(256, 256, 3, (27, 27), order="conventional")


def test_efficient_below_dense_where_conventional_is_above():
    x = torch.zeros(1, 64, 16, 16)
    dense = fc.count(nn.Conv2d(64, 64, 3, padding=1), x)
    eff = fc.count(TTConv2d(64, 64, 3, 8, padding=1), x)
    conv = fc.count(TTConv2d(64, 64, 3, 8, padding=1, order="conventional"), x)
    assert eff.params < dense.params and conv.params < dense.params
    assert eff.macs < dense.macs < conv.macs


@pytest.mark.parametrize("kwargs,match", [
    (dict(groups=2), "groups=1"),
    (dict(order="fancy"), "order"),
    (dict(in_shape=(4, 4)), "multiply to 12"),
    (dict(in_shape=(12,), order="conventional"), "same length"),
    (dict(rank=(2, 2)), "bonds"),
    (dict(rank=(2, 99, 2, 2)), "exceeds"),
])
def test_bad_arguments(kwargs, match):
    kw = {"rank": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        TTConv2d(12, 8, 3, **kw)
