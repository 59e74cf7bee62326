"""Per-class properties the generic tests (test_layers_generic.py) do not cover: SVD's Eckart-Young
error and balanced split, CP's balanced factors, reprs, bad ranks, NaN weights."""
import pytest
import torch
from torch import nn

from factorch.layers import CPConv2d, SVDConv2d, SVDLinear, TuckerConv2d

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


def test_int_path_builds_at_exact_ranks_and_the_spec_path_resolves_once():
    """``from_dense_at``/``empty_at`` take resolved ints and refuse ranks outside [1, full] (no second
    resolve, no cap); ``from_dense``/``empty_like`` resolve any spec once, then take the int path."""
    from factorch.layers import TTLinear

    conv = nn.Conv2d(8, 4, 3).double()
    with pytest.raises(ValueError, match="exceeds the full rank 4"):
        TuckerConv2d.from_dense_at(conv, (6, 3))
    with pytest.raises(ValueError, match="takes int ranks"):
        TuckerConv2d.empty_at(conv, 0.5)
    capped = TuckerConv2d.from_dense(conv, 6)  # an int spec: a ceiling per mode, by the resolver
    exact = TuckerConv2d.from_dense_at(conv, (4, 6))
    assert capped.ranks == exact.ranks == (4, 6) and torch.equal(capped.dense_weight(), exact.dense_weight())
    assert TuckerConv2d.empty_like(conv, 6).ranks == TuckerConv2d.empty_at(conv, (4, 6)).ranks
    assert CPConv2d.from_dense(conv, 3, restarts=2).rank == 3  # fit options pass through to from_dense_at
    lin = nn.Linear(64, 32).double()
    tt = TTLinear.from_dense(lin, 0.25, in_shape=(8, 8), out_shape=(4, 8), order="rtl")  # structure options
    assert tt.in_shape == (8, 8) and tt.order == "rtl"
    assert tt.ranks == TTLinear.resolve_rank(lin, 0.25, in_shape=(8, 8), out_shape=(4, 8), order="rtl")
