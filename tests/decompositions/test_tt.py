"""TT-SVD (Oseledets 2011) and TT-matrices: exact at full rank, error <= eps, rank rules, shapes."""
import math

import pytest
import torch

import factorch as fc
from factorch.decompositions import (balanced_factors, interleave, max_tt_ranks, tensorize, tolerance_rank,
                                     tt_matrix_svd, tt_matrix_to_matrix, tt_params, tt_svd, tt_to_tensor)
from factorch.layers.tt_linear import bond_unfoldings, sequential_ranks as tt_rule_ranks
from factorch.rank import Mode, RankSpace, resolve


def _tt_space(shape, tensor=None):
    """The rank space of a tensor train over ``shape`` (what TTLinear/TTConv2d describe)."""
    full = max_tt_ranks(shape)
    return RankSpace("TT", tuple(Mode(f"bond {k + 1}", f) for k, f in enumerate(full)),
                     params=lambda r: tt_params(shape, r), macs=lambda r, s: 0, dense_params=math.prod(shape),
                     dense_macs=lambda s: 0, unfoldings=None if tensor is None else lambda: [bond_unfoldings(tensor)],
                     error_modes=len(shape) - 1, fraction="uniform", unit="bond")


def full_unfolding_ranks(tensor, rule):
    """What the resolver reads off the full tensor's bond unfoldings (the budget's scores)."""
    return resolve(rule, _tt_space(tuple(tensor.shape), tensor)).ranks


def _low_tt_rank_tensor(shape, ranks, noise=0.0):
    full = (1, *ranks, 1)
    cores = [torch.randn(full[k], n, full[k + 1], dtype=torch.float64) for k, n in enumerate(shape)]
    t = tt_to_tensor(cores)
    return t + noise * t.norm() / math.sqrt(t.numel()) * torch.randn_like(t)


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (7,), (2, 3), (3, 1, 4, 2, 5)])
def test_full_rank_is_exact(shape):
    a = torch.randn(*shape, dtype=torch.float64)
    cores = tt_svd(a, rank=max_tt_ranks(shape))
    assert [c.shape[-1] for c in cores[:-1]] == list(max_tt_ranks(shape))
    assert (tt_to_tensor(cores) - a).abs().max() < 1e-10


@pytest.mark.parametrize("eps", [0.5, 0.3, 0.2, 0.1, 0.05, 0.01, 0.0])
@pytest.mark.parametrize("structured", [False, True])
def test_tolerance_bound_holds(eps, structured):
    torch.manual_seed(3)
    a = _low_tt_rank_tensor((5, 6, 7, 4), (3, 6, 2), noise=0.2) if structured \
        else torch.randn(5, 6, 7, 4, dtype=torch.float64)
    cores = tt_svd(a, eps=eps)
    err = float((tt_to_tensor(cores) - a).norm() / a.norm())
    assert err <= eps + 1e-12
    # the first step keeps the smallest rank whose tail meets delta = eps ||A|| / sqrt(d - 1)
    s = torch.linalg.svdvals(a.reshape(5, -1))
    delta, r1 = eps * float(a.norm()) / math.sqrt(3), cores[0].shape[-1]
    tail = lambda r: float(s[r:].pow(2).sum().sqrt())  # noqa: E731
    assert tail(r1) <= delta and (r1 == 1 or tail(r1 - 1) > delta)


def test_tolerance_ranks_shrink_as_eps_grows_and_find_exact_ranks():
    torch.manual_seed(0)
    a = _low_tt_rank_tensor((6, 5, 7, 4), (3, 4, 2))
    assert tt_rule_ranks(a, fc.Tolerance(1e-10)) == (3, 4, 2)
    ranks = [sum(tt_rule_ranks(torch.randn(6, 5, 7, 4, dtype=torch.float64), fc.Tolerance(e)))
             for e in (0.05, 0.3, 0.6)]
    assert ranks[0] >= ranks[1] >= ranks[2]


def test_fixed_ranks_quasi_optimal_and_error_decreases_with_rank():
    torch.manual_seed(1)
    a = torch.randn(4, 6, 6, 4, dtype=torch.float64)
    space = _tt_space(tuple(a.shape))  # an int is a ceiling per bond: the resolver's convention
    errs = [float((tt_to_tensor(tt_svd(a, rank=resolve(r, space).ranks)) - a).norm()) for r in (1, 2, 4, 8, 16, 24)]
    assert all(e1 >= e2 - 1e-12 for e1, e2 in zip(errs, errs[1:]))
    assert errs[-1] < 1e-10  # rank 24 = full for every bond


def test_requested_rank_above_unfolding_is_zero_padded():
    """(1, 4, 1) shape with ranks (1, 3): the second unfolding has rank <= 1, so the extra columns
    are zeros, the cores keep the requested shapes and the result stays exact."""
    a = torch.randn(2, 4, 2, dtype=torch.float64)
    cores = tt_svd(a, rank=(1, 2))
    assert [tuple(c.shape) for c in cores] == [(1, 2, 1), (1, 4, 2), (2, 2, 1)]
    full = tt_svd(a, rank=(2, 2))
    assert (tt_to_tensor(full) - a).abs().max() < 1e-10


def test_rule_ranks_report_zero():
    """A rule's 0 is passed through (callers skip the layer), not silently raised to 1."""
    ranks = tt_rule_ranks(torch.randn(16, 16, 16, dtype=torch.float64), fc.EVBMF())
    assert min(ranks) == 0


def test_tt_matrix_interleaves_rows_and_columns():
    torch.manual_seed(2)
    out_shape, in_shape = (3, 2, 5), (2, 7, 3)
    w = torch.randn(30, 42, dtype=torch.float64)
    cores = tt_matrix_svd(w, out_shape, in_shape, rank=max_tt_ranks((6, 14, 15)))
    assert [tuple(c.shape[1:3]) for c in cores] == list(zip(out_shape, in_shape))
    assert (tt_matrix_to_matrix(cores) - w).abs().max() < 1e-10
    # the definition, entry by entry: W[(i1 i2 i3), (j1 j2 j3)] = G1[i1, j1] G2[i2, j2] G3[i3, j3]
    i, j = (2, 1, 4), (1, 5, 2)
    prod = cores[0][:, i[0], j[0], :] @ cores[1][:, i[1], j[1], :] @ cores[2][:, i[2], j[2], :]
    row, col = (i[0] * 2 + i[1]) * 5 + i[2], (j[0] * 7 + j[1]) * 3 + j[2]
    assert abs(float(prod) - float(w[row, col])) < 1e-10
    # the interleaved tensor's TT, its ranks bounded by the merged modes (m_k n_k)
    assert interleave(w, out_shape, in_shape).shape == (6, 14, 15)


@pytest.mark.parametrize("eps", [0.4, 0.1, 0.02])
def test_tt_matrix_tolerance(eps):
    w = torch.randn(64, 48, dtype=torch.float64)
    cores = tt_matrix_svd(w, (4, 4, 4), (4, 4, 3), eps=eps)
    assert float((tt_matrix_to_matrix(cores) - w).norm() / w.norm()) <= eps + 1e-12


def test_shapes_and_params():
    assert max_tt_ranks((4, 5, 6, 3)) == (4, 18, 3)
    assert tt_params((4, 5, 6), (2, 3)) == 1 * 4 * 2 + 2 * 5 * 3 + 3 * 6 * 1
    assert balanced_factors(4096, 4) == (8, 8, 8, 8)
    assert math.prod(balanced_factors(25088, 6)) == 25088 and max(balanced_factors(25088, 6)) == 8
    assert balanced_factors(784, 2) == (28, 28)
    assert tensorize(1009, 3) == (13, 13, 6)  # a prime is padded to 1014 = 13 * 13 * 6
    assert tensorize(1009, 3, pad=False) == (1009, 1, 1)
    assert tensorize(1024, 3) == (16, 8, 8)


def test_tolerance_rank_on_tails():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    assert tolerance_rank(s, 0.0) == 4
    assert tolerance_rank(s, 1.0) == 3                # tail sqrt(1) <= 1
    assert tolerance_rank(s, math.sqrt(5.0)) == 2     # tail sqrt(4 + 1)
    assert tolerance_rank(s, 100.0) == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "exactly one"),
    (dict(rank=2, eps=0.1), "exactly one"),
    (dict(rank=0), ">= 1"),
    (dict(rank=(2, 2)), "one per bond"),
    (dict(eps=1.5), r"\[0, 1\)"),
    (dict(eps=-0.1), r"\[0, 1\)"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tt_svd(torch.randn(3, 4, 5, 2), **kwargs)


def test_resolve_tt_ranks():
    """The one resolver on a tensor train's space: an int caps per bond (noted), a tuple is exact,
    a fraction is the largest uniform rank within the budget, a rule needs weights."""
    space = _tt_space((4, 4, 4, 4))
    assert space.full == (4, 16, 4)
    capped = resolve(8, space)
    assert capped.ranks == (4, 8, 4) and capped.capped and "capped at the full ranks" in capped.note
    assert resolve((2, 3, 4), space).ranks == (2, 3, 4)
    r = resolve(0.5, space).ranks
    assert space.params(r) <= 128
    bigger = tuple(min(max(r) + 1, f) for f in space.full)
    assert space.params(bigger) > 128  # the largest uniform rank within the budget
    with pytest.raises(ValueError, match="exceeds the full rank of mode 'bond 2'"):
        resolve((2, 17, 4), space)
    with pytest.raises(ValueError, match="has 2 ranks; TT here has 3 bonds"):
        resolve((2, 2), space)
    with pytest.raises(ValueError, match="no spectra"):
        resolve(fc.Tolerance(0.1), space)
    with pytest.raises(ValueError, match="eps"):
        fc.Tolerance(1.0)
    with pytest.raises(ValueError, match="eps"):
        fc.Tolerance(True)


@pytest.mark.parametrize("eps", [0.5, 0.2, 0.05])
def test_tolerance_ranks_from_bond_unfoldings_bound_tt_svd(eps):
    """Oseledets 2011 Thm 2.2: TT-SVD at the ranks Tolerance reads off the full tensor's bond
    unfoldings (each tail <= eps ||A|| / sqrt(d - 1)) has error <= eps ||A||."""
    torch.manual_seed(4)
    a = _low_tt_rank_tensor((5, 6, 7, 4), (3, 6, 2), noise=0.3)
    ranks = full_unfolding_ranks(a, fc.Tolerance(eps))
    assert all(s <= f for s, f in zip(tt_rule_ranks(a, fc.Tolerance(eps)), ranks))  # TT-SVD's own: never larger
    err = float((tt_to_tensor(tt_svd(a, rank=ranks)) - a).norm() / a.norm())
    assert err <= eps + 1e-12


def test_tt_svd_applies_resolved_ranks_and_never_caps():
    """One convention: an int is a ceiling only in the resolver (``factorch.rank.resolve``); the TT
    math applies resolved ranks and refuses one above a bond's full rank instead of capping it."""
    a = torch.randn(4, 6, 6, 4, dtype=torch.float64)
    space = _tt_space(tuple(a.shape))
    assert space.full == (4, 24, 4)
    with pytest.raises(ValueError, match=r"TT rank 8 of bond 1 must be in \[1, 4\]"):
        tt_svd(a, rank=8)
    with pytest.raises(ValueError, match=r"TT rank 25 of bond 2 must be in \[1, 24\]"):
        tt_svd(a, rank=(2, 25, 2))
    resolved = resolve(8, space)
    cores = tt_svd(a, rank=resolved.ranks)
    assert resolved.capped and [c.shape[-1] for c in cores[:-1]] == [4, 8, 4]
    assert [c.shape[-1] for c in tt_svd(a, rank=3)[:-1]] == [3, 3, 3]  # an int within every bond: the same rank
