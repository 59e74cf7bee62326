"""EVBMF (Nakajima et al. 2013): exact tau-bar, exact rank on low rank + noise, invariances, noise -> 0."""
import math

import pytest
import torch

import factorch as fc
from factorch.decompositions import tau_bar


def _phi(z):
    return math.log1p(z) / z - 0.5


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.1, 0.01])
def test_tau_bar_is_the_root(alpha):
    t = tau_bar(alpha)
    assert abs(_phi(t) + _phi(t / alpha)) < 1e-10
    if alpha == 1.0:
        assert abs(t - 2.5129) < 1e-4
    else:  # the 2.5129 sqrt(alpha) stand-in underestimates it (docs/math.md, "EVBMF")
        assert t > 2.5129 * math.sqrt(alpha)


def _low_rank_plus_noise(l, m, r, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(l, r, generator=g, dtype=torch.float64)
    b = torch.randn(r, m, generator=g, dtype=torch.float64)
    return a @ b / math.sqrt(r) + noise * torch.randn(l, m, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("l,m,r", [(256, 2304, 60), (64, 576, 10), (100, 100, 20), (300, 50, 7)])
def test_exact_rank_on_low_rank_plus_noise(l, m, r):
    assert fc.evbmf(_low_rank_plus_noise(l, m, r)) == r


@pytest.mark.parametrize("scale", [1e-3, 1e-2, 0.1, 0.3, 1.0, 10.0, 1e3])
def test_invariant_to_scale_and_transpose(scale):
    y = _low_rank_plus_noise(128, 1152, 30, noise=0.3, seed=3)
    ref = fc.evbmf(y)
    assert fc.evbmf(y * scale) == ref
    assert fc.evbmf((y * scale).T) == ref


@pytest.mark.parametrize("shape", [(64, 576), (300, 500), (500, 300), (10, 10)])
def test_pure_noise_gives_zero(shape):
    assert fc.evbmf(torch.randn(*shape, dtype=torch.float64)) == 0


def test_never_more_than_min_dim_and_zero_matrix():
    y = torch.randn(20, 5, dtype=torch.float64) @ torch.randn(5, 30, dtype=torch.float64)  # exact rank 5, no noise
    r = fc.evbmf(y)
    assert 0 <= r <= 20
    full = torch.randn(6, 6, dtype=torch.float64) * torch.logspace(3, 0, 6, dtype=torch.float64)
    assert fc.evbmf(full) <= 6
    assert fc.evbmf(torch.zeros(8, 12)) == 0


def test_kaiming_init_conv_unfolding_is_rank_zero():
    conv = torch.nn.Conv2d(64, 64, 3)
    assert fc.evbmf(conv.weight.detach().reshape(64, -1)) == 0


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        fc.evbmf(torch.randn(3, 3, 3))
    with pytest.raises(ValueError, match="NaN"):
        fc.evbmf(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
