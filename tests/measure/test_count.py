"""fc.count matches hand-computed params and MACs (Elhoushi et al. 2019, Eq. 10-11), strided layers included."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers import CPConv2d, SVDLinear, TuckerConv2d
from factorch.models.vgg import CONFIGS


def test_vgg19_layers_and_total():
    model = fc.models.create("vgg19")
    counts = fc.count(model, torch.zeros(1, 3, 32, 32))
    rows = {r.name: r for r in counts.layers}
    assert rows["features.0"].macs == 32 * 32 * 3 * 9 * 64 and rows["features.0"].params == 3 * 9 * 64
    assert rows["features.7"].macs == 16 * 16 * 64 * 9 * 128
    assert rows["features.49"].macs == 2 * 2 * 512 * 9 * 512
    assert rows["classifier"].macs == 512 * 10
    # closed form over the config: H'W' * 9 * C * N per conv, side halves at each "M"
    total, c, side = 0, 3, 32
    for v in CONFIGS["vgg19"]:
        if v == "M":
            side //= 2
        else:
            total += side * side * 9 * c * v
            c = v
    assert counts.macs == total + 512 * 10
    assert counts.params == 20_035_018


def test_macs_are_per_example():
    model = fc.models.create("resnet20")
    one = fc.count(model, torch.zeros(1, 3, 32, 32)).macs
    assert fc.count(model, torch.zeros(4, 3, 32, 32)).macs == one


def test_resnet20_strided_layer():
    model = fc.models.create("resnet20")
    rows = {r.name: r for r in fc.count(model, torch.zeros(1, 3, 32, 32)).layers}
    assert rows["layer2.0.conv1"].macs == 16 * 16 * 16 * 9 * 32  # stride 2: 32x32 -> 16x16
    assert rows["layer2.0.conv2"].macs == 16 * 16 * 32 * 9 * 32
    assert rows["layer3.0.conv1"].macs == 8 * 8 * 32 * 9 * 64
    assert rows["fc"].macs == 64 * 10


@pytest.mark.parametrize("stride", [1, 2])
def test_tucker_layer_matches_eq_10_and_11(stride):
    c, n, r_in, r_out, h = 16, 32, 5, 7, 32
    layer = TuckerConv2d(c, n, 3, rank=(r_out, r_in), stride=stride, padding=1, bias=False)
    counts = fc.count(layer, torch.zeros(1, c, h, h))
    ho = h // stride
    # Eq. 10 (params) and Eq. 11's denominator (MACs), input-resolution first 1x1 included
    assert counts.params == c * r_in + 9 * r_in * r_out + n * r_out
    assert counts.macs == c * r_in * h * h + 9 * r_in * r_out * ho * ho + n * r_out * ho * ho
    dense = fc.count(nn.Conv2d(c, n, 3, stride, 1, bias=False), torch.zeros(1, c, h, h)).macs
    speedup = 9 * c * n * ho * ho / (c * r_in * h * h + 9 * r_in * r_out * ho * ho + n * r_out * ho * ho)
    assert dense / counts.macs == pytest.approx(speedup)


def test_cp_and_svd_layers():
    c, n, r, h = 16, 24, 6, 15
    layer = CPConv2d(c, n, (3, 5), rank=r, stride=(2, 1), padding=(1, 2))
    counts = fc.count(layer, torch.zeros(1, c, h, h))
    ho, wo = (h + 2 - 3) // 2 + 1, h
    assert counts.params == r * (c + 3 + 5 + n) + n
    assert counts.macs == h * h * c * r + ho * h * 3 * r + ho * wo * 5 * r + ho * wo * r * n
    lin = SVDLinear(100, 50, rank=8)
    assert fc.count(lin, torch.zeros(3, 100)).macs == 100 * 8 + 8 * 50


def test_count_restores_training_mode_and_bn_stats():
    model = fc.models.create("resnet20").train()
    stats = model.bn1.running_mean.clone()
    fc.count(model, torch.randn(2, 3, 32, 32))
    assert model.training and model.bn1.training
    assert torch.equal(model.bn1.running_mean, stats)


def test_count_on_meta_device():
    with torch.device("meta"):
        model = fc.models.create("vgg11")
    assert fc.count(model, torch.empty(1, 3, 32, 32, device="meta")).macs > 0
