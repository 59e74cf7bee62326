"""Decomposing real layers: full rank is lossless, CP recovers an exact-rank kernel, trained factors
rebuild losslessly, gradients reach every factor, dtype and device are kept."""
import pytest
import torch
from torch import nn

from factorch.decompositions import cp_to_tensor
from factorch.layers import CPConv2d, SVDConv2d, SVDLinear, TuckerConv2d

CONVS = [
    dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, padding=1),
    dict(in_channels=8, out_channels=16, kernel_size=5, dilation=2, padding=(2, 0), groups=4, bias=False),
    dict(in_channels=6, out_channels=6, kernel_size=(1, 7), padding="same", padding_mode="reflect"),
]


def _x(c, batch=2, h=15, w=13):
    return torch.randn(batch, c, h, w, dtype=torch.float64)


@pytest.mark.parametrize("kw", CONVS)
def test_tucker_full_rank_reproduces_conv(kw):
    conv = nn.Conv2d(**kw).double()
    g = conv.groups
    layer = TuckerConv2d.from_dense(conv, (conv.out_channels // g, conv.in_channels // g))
    x = _x(conv.in_channels)
    assert (layer(x) - conv(x)).abs().max() < 1e-10


@pytest.mark.parametrize("kw", [dict(in_channels=8, out_channels=12, kernel_size=1, stride=2, padding=1),
                                dict(in_channels=8, out_channels=8, kernel_size=1, groups=2, bias=False)])
def test_svd_conv_full_rank_reproduces_conv(kw):
    conv = nn.Conv2d(**kw).double()
    layer = SVDConv2d.from_dense(conv, min(conv.in_channels, conv.out_channels) // conv.groups)
    x = _x(conv.in_channels)
    assert (layer(x) - conv(x)).abs().max() < 1e-10


def test_svd_linear_full_rank_and_batch_dims():
    lin = nn.Linear(20, 30).double()
    layer = SVDLinear.from_dense(lin, 20)
    x = torch.randn(4, 5, 20, dtype=torch.float64)
    assert (layer(x) - lin(x)).abs().max() < 1e-10


def test_svd_reduced_rank_error_is_eckart_young():
    lin = nn.Linear(40, 30).double()
    layer = SVDLinear.from_dense(lin, 7)
    s = torch.linalg.svdvals(lin.weight.detach())
    err = (layer.dense_weight() - lin.weight.detach()).norm()
    assert abs(err - s[7:].pow(2).sum().sqrt()) < 1e-10
    # balanced split: both factors have the same singular values sqrt(sigma_i)
    s1 = torch.linalg.svdvals(layer.first.weight.detach())
    s2 = torch.linalg.svdvals(layer.last.weight.detach())
    assert torch.allclose(s1, s2, atol=1e-10)


def test_cp_recovers_exact_rank_kernel():
    torch.manual_seed(1)
    rank, dims = 5, (12, 8, 3, 3)
    factors = [torch.randn(d, rank, dtype=torch.float64) for d in dims]
    conv = nn.Conv2d(8, 12, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(cp_to_tensor(factors))
    layer = CPConv2d.from_dense(conv, rank, restarts=3)
    w = conv.weight.detach()
    assert (layer.dense_weight() - w).norm() / w.norm() < 1e-6
    x = _x(8)
    assert (layer(x) - conv(x)).abs().max() / conv(x).abs().max() < 1e-6


def test_cp_factors_are_balanced_and_not_degenerate():
    conv = nn.Conv2d(16, 16, 3).double()
    layer = CPConv2d.from_dense(conv, 24)
    cols = [layer.first.weight[:, :, 0, 0].T, layer.vertical.weight[:, 0, :, 0].T,
            layer.horizontal.weight[:, 0, 0, :].T, layer.last.weight[:, :, 0, 0]]
    norms = torch.stack([c.detach().norm(dim=0) for c in cols])  # (4, R)
    # each component's four columns carry the same norm lambda_r^(1/4)
    assert torch.allclose(norms, norms[:1].expand_as(norms), rtol=1e-8)
    # no component far larger than the kernel itself (divergent, cancelling components)
    lam = norms.prod(0)
    assert lam.max() <= 10 * conv.weight.detach().norm()


def _perturb(layer):
    """Pretend to train: a few SGD steps on a random target so factors are no longer orthogonal."""
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(3):
        x = torch.randn(2, layer.config.in_channels if hasattr(layer, "config") else layer.in_features,
                        *(() if not hasattr(layer, "config") else (9, 9)), dtype=torch.float64)
        loss = (layer(x) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("make", [
    lambda: TuckerConv2d.from_dense(nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2).double(), (3, 2)),
    lambda: CPConv2d.from_dense(nn.Conv2d(8, 12, 3, padding=(1, 0)).double(), 6),
    lambda: SVDConv2d.from_dense(nn.Conv2d(8, 12, 1, stride=2).double(), 3),
    lambda: SVDLinear.from_dense(nn.Linear(8, 12).double(), 3),
])
def test_to_dense_is_lossless_after_training_and_gradients_reach_every_factor(make):
    layer = make()
    _perturb(layer)
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    dense = layer.to_dense()
    x = torch.randn(3, 8, 11, 9, dtype=torch.float64) if hasattr(layer, "config") else torch.randn(3, 8, dtype=torch.float64)
    assert type(dense) in (nn.Conv2d, nn.Linear)
    assert (dense(x) - layer(x)).abs().max() < 1e-10


def test_from_dense_keeps_dtype_and_device():
    conv = nn.Conv2d(8, 8, 3).to(torch.float32)
    for layer in (TuckerConv2d.from_dense(conv, (4, 4)), CPConv2d.from_dense(conv, 4)):
        assert all(p.dtype == torch.float32 for p in layer.parameters())
        assert all(p.device == conv.weight.device for p in layer.parameters())
        assert layer.to_dense().weight.dtype == torch.float32
    half = nn.Conv2d(8, 8, 3).to(torch.bfloat16)
    assert TuckerConv2d.from_dense(half, (4, 4)).core.weight.dtype == torch.bfloat16


def test_extra_repr_shows_ranks():
    assert "ranks=(out=4, in=3)" in repr(TuckerConv2d(8, 8, 3, rank=(4, 3)))
    assert "rank=5" in repr(CPConv2d(8, 8, 3, rank=5))
    assert "rank=2" in repr(SVDLinear(8, 8, rank=2))


@pytest.mark.parametrize("make,match", [
    (lambda: TuckerConv2d(8, 8, 3, rank=(9, 2)), "must be in"),
    (lambda: TuckerConv2d(8, 8, 3, rank=(0, 2)), "must be in"),
    (lambda: CPConv2d(8, 8, 3, rank=0), "must be in"),
    (lambda: SVDLinear(8, 8, rank=9), "must be in"),
    (lambda: SVDConv2d(8, 8, 3, rank=2), "1x1"),
    (lambda: TuckerConv2d.from_dense(nn.Conv2d(8, 8, 3), rank=(100, 100)), "exceeds the full rank"),
    (lambda: TuckerConv2d.from_dense(nn.Conv2d(8, 8, 3), rank=-1), ">= 1"),
    (lambda: TuckerConv2d.from_dense(nn.Conv2d(8, 8, 3), rank="big"), "rank must be"),
])
def test_bad_ranks_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_nan_weights_are_refused():
    conv = nn.Conv2d(4, 4, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        TuckerConv2d.from_dense(conv, (2, 2))
