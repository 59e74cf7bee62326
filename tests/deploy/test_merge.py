"""Merging adjacent factors: exact, and chosen by the fewest-MACs rule (docs/math.md, "Deployment")."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.deploy.chains import _compose, merge
from factorch.layers import SVDConv2d, TuckerConv2d

pytestmark = pytest.mark.usefixtures("one_thread")


def close(a, b):
    return (a - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max()))


def test_a_stem_tucker2_merges_its_first_1x1_into_the_core():
    """conv7x7 3->16 s2 at ranks (out 8, in 3): the first 1x1 (3 -> 3) costs H W 3 3 MACs at the
    input resolution and merging it into the core costs nothing more: ``first+core | last``."""
    conv = nn.Conv2d(3, 16, 7, 2, 3)
    layer = TuckerConv2d.from_dense_at(conv, (8, 3)).eval()
    merged = merge(layer, (3, 32, 32))
    core = 16 * 16 * 49 * 3 * 8                      # H' W' kh kw R_in R_out
    last = 16 * 16 * 8 * 16                          # H' W' R_out N
    assert merged.label == "first+core | last" and merged.macs == core + last
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(merged.module()(x), layer(x))


def test_grouped_tucker2_merges_per_group():
    """groups 2, per group C 4, N 6, ranks (out 3, in 4): per output pixel and group, merging the first
    1x1 into the core costs 9 C R_out = 108 < C R_in + 9 R_in R_out = 124; merging the last into that
    would cost 9 C N = 216 > 108 + R_out N = 126."""
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=2, padding_mode="reflect")
    layer = TuckerConv2d.from_dense_at(conv, (3, 4)).eval()
    merged = merge(layer, (8, 9, 9))
    assert merged.label == "first+core | last" and merged.macs == 81 * 2 * (108 + 18)
    assert merged.modules[0].groups == 2 and merged.modules[0].padding_mode == "reflect"
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert close(merged.module()(x), layer(x))


def test_an_svd_chain_costlier_than_dense_is_rebuilt_dense():
    """rank 8 of a 1x1 conv 8 -> 12: R (C + N) = 160 MACs per pixel > C N = 96: one conv."""
    conv = nn.Conv2d(8, 12, 1, stride=2, padding=1)
    layer = SVDConv2d.from_dense_at(conv, (8,)).eval()
    merged = merge(layer, (8, 7, 7))
    assert merged.label == "first+last" and len(merged.modules) == 1 and merged.macs == 5 * 5 * 96
    model = nn.Sequential(layer, nn.BatchNorm2d(12)).eval()
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        expected = model(x)
    report = fc.deploy_(model, x[:1])
    assert report.layers[0].form == "dense" and report.layers[0].note == "dense costs the fewest MACs"
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[1], nn.Identity)
    with torch.no_grad():
        assert close(model(x), expected)


@pytest.mark.parametrize("mode,merges", [("zeros", False), ("reflect", True), ("circular", True)])
def test_a_biased_pointwise_merges_into_a_padded_conv_only_without_zero_padding(mode, merges):
    """A bias before a zero-padded conv would be lost on the border; other padding modes copy it."""
    a = nn.Conv2d(4, 6, 1, bias=True)
    b = nn.Conv2d(6, 5, 3, padding=1, padding_mode=mode)
    run = _compose([a, b])
    assert (run is not None) == merges
    if merges:
        x = torch.randn(2, 4, 6, 7)
        with torch.no_grad():
            assert close(run(x), b(a(x)))


def test_a_pointwise_after_any_conv_merges_with_both_biases():
    a = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1)
    b = nn.Conv2d(6, 5, 1)
    run = _compose([a, b])
    x = torch.randn(2, 4, 9, 8)
    with torch.no_grad():
        assert run.stride == (2, 2) and close(run(x), b(a(x)))
    lin = _compose([nn.Linear(5, 3), nn.Linear(3, 4)])
    assert lin.in_features == 5 and lin.out_features == 4


def test_two_spatial_convs_do_not_merge():
    assert _compose([nn.Conv2d(4, 4, (3, 1), padding=(1, 0)), nn.Conv2d(4, 4, (1, 3), padding=(0, 1))]) is None


def test_merge_false_folds_only():
    conv = nn.Conv2d(3, 16, 7, 2, 3)
    model = nn.Sequential(TuckerConv2d.from_dense_at(conv, (8, 3)), nn.BatchNorm2d(16)).eval()
    report = fc.deploy_(model, torch.randn(1, 3, 32, 32), merge_factors=False)
    assert isinstance(model[0], TuckerConv2d) and report.layers[0].form == "factorized" and len(report.folded) == 1
