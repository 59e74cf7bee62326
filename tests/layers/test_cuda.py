"""CUDA paths: factors computed in float64 on the layer's GPU keep its device and dtype; skipped without CUDA."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers import CPConv2d, SVDLinear, TTConv2d, TTLinear, TuckerConv2d

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("make", [
    lambda conv: TuckerConv2d.from_dense(conv, (8, 8)),
    lambda conv: CPConv2d.from_dense(conv, 8),
])
def test_from_dense_on_cuda_keeps_device_and_dtype(make):
    conv = nn.Conv2d(16, 16, 3, padding=1).cuda()
    layer = make(conv)
    assert all(p.is_cuda and p.dtype == torch.float32 for p in layer.parameters())
    x = torch.randn(2, 16, 9, 9, device="cuda")
    ref = layer.to_dense()(x)
    assert (layer(x) - ref).abs().max() < 1e-4 * ref.abs().max()


def test_decompose_reconstruct_model_on_cuda():
    model = fc.models.create("resnet20").cuda().eval()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    report = fc.decompose_(model, [fc.Tucker2(0.5), fc.SVD(0.5)], example_input=x[:1])
    assert report.decomposed and all(p.is_cuda for p in model.parameters())
    y = model(x)
    fc.reconstruct_(model)
    assert all(p.is_cuda for p in model.parameters())
    assert (model(x) - y).abs().max() < 1e-3 * y.abs().max()


def test_full_rank_svd_on_cuda_half():
    lin = nn.Linear(32, 24).cuda().half()
    layer = SVDLinear.from_dense(lin, 24)
    x = torch.randn(5, 32, device="cuda", dtype=torch.half)
    assert layer.first.weight.dtype == torch.half
    assert (layer(x) - lin(x)).abs().max() < 5e-2


# ---- tensor trains: every contraction order runs on the GPU

def test_tt_linear_on_cuda_every_order():
    lin = nn.Linear(97, 60).cuda()
    layer = TTLinear.from_dense(lin, 4)
    assert all(p.is_cuda and p.dtype == torch.float32 for p in layer.parameters())
    x = torch.randn(3, 97, device="cuda")
    ref = layer.to_dense()(x)
    for order in ("ltr", "rtl", "dense"):
        layer.order = order
        assert (layer(x) - ref).abs().max() < 1e-4 * ref.abs().max()


@pytest.mark.parametrize("order", ["efficient", "conventional"])
def test_tt_conv_on_cuda(order):
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1).cuda()
    layer = TTConv2d.from_dense(conv, 6, order=order)
    assert all(p.is_cuda for p in layer.parameters())
    x = torch.randn(2, 16, 9, 9, device="cuda")
    ref = layer.to_dense()(x)
    assert (layer(x) - ref).abs().max() < 1e-4 * ref.abs().max()


def test_decompose_model_with_tt_on_cuda():
    model = fc.models.create("resnet20").cuda().eval()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    report = fc.decompose_(model, fc.TT(8), example_input=x[:1])
    assert report.decomposed and all(p.is_cuda for p in model.parameters())
    y = model(x)
    fc.reconstruct_(model)
    assert (model(x) - y).abs().max() < 1e-3 * y.abs().max()
