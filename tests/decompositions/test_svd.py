"""Truncated SVD routes and singular values: each route's error against the exact truncated SVD
(Eckart-Young optimum) on flat and decaying spectra, tall and wide; singular values against
``svdvals``; the route table; bad input."""
import math

import pytest
import torch

from factorch.decompositions import balanced_svd, singular_values, svd_method, truncated_svd
from factorch.decompositions import svd as svd_module

U64 = torch.finfo(torch.float64).eps


def _spectrum(m: int, n: int, sigma: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """An (m, n) matrix with singular values ``sigma`` (length min(m, n)) and random vectors."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q
    return (u * sigma) @ v.T


def _low_rank_plus_noise(m: int, n: int, r: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(m, n, generator=g, dtype=torch.float64) * 0.1 / math.sqrt(n)
    return _spectrum(m, n, torch.cat([torch.full((r,), 10.0), torch.zeros(min(m, n) - r)]), seed) + noise


def _k(m, n):
    return torch.arange(1, min(m, n) + 1, dtype=torch.float64)


# flat (Gaussian: float32 iterations) to fast decay (float64 iterations: error below 10 %)
SPECTRA = {
    "gaussian": lambda m, n, r: torch.randn(m, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
    "power 0.5": lambda m, n, r: _spectrum(m, n, _k(m, n) ** -0.5),
    "power 1": lambda m, n, r: _spectrum(m, n, _k(m, n) ** -1.0),
    "exponential": lambda m, n, r: _spectrum(m, n, torch.exp(-_k(m, n) / 20.0)),
    "low rank + noise": lambda m, n, r: _low_rank_plus_noise(m, n, r // 2),
}
SHAPES = [(480, 400, 40), (300, 700, 24)]  # square-ish and wide, ranks small against the size


def _errors(w, u, s, vh, rank):
    opt = float(torch.linalg.svdvals(w)[rank:].pow(2).sum().sqrt())
    return float((w - (u * s) @ vh).norm()), opt


@pytest.mark.parametrize("kind", sorted(SPECTRA))
@pytest.mark.parametrize("m,n,rank", SHAPES)
@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_randomized_error_within_tol_of_the_optimum(kind, m, n, rank, tol):
    w = SPECTRA[kind](m, n, rank)
    assert svd_method((m, n), rank) == "randomized"
    u, s, vh = truncated_svd(w, rank, "randomized", tol=tol)
    err, opt = _errors(w, u, s, vh, rank)
    assert err <= (1 + tol) * opt + 1e-12 * float(w.norm())
    assert torch.allclose(u.T @ u, torch.eye(rank, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(vh @ vh.T, torch.eye(rank, dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize("method", ["full", "gram"])
@pytest.mark.parametrize("kind", sorted(SPECTRA))
def test_exact_routes_reach_the_optimum(method, kind):
    w = SPECTRA[kind](200, 150, 30)
    u, s, vh = truncated_svd(w, 30, method)
    err, opt = _errors(w, u, s, vh, 30)
    assert abs(err - opt) <= 1e-10 * float(w.norm())
    assert torch.allclose(s, torch.linalg.svdvals(w)[:30], atol=1e-10 * float(w.norm()))
    assert torch.allclose(u.T @ u, torch.eye(30, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("method", ["full", "gram", "randomized"])
@pytest.mark.parametrize("true_rank,rank", [(12, 5), (12, 12), (12, 40)])
def test_exactly_low_rank_matrix(method, true_rank, rank):
    """Rank at or above the true rank reproduces the matrix; below it, the bound holds. A rank
    below the sketch width makes the randomized basis singular (its exact fallback)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, true_rank, generator=g, dtype=torch.float64) @ torch.randn(true_rank, 260, generator=g,
                                                                                      dtype=torch.float64)
    u, s, vh = truncated_svd(w, rank, method)
    err, opt = _errors(w, u, s, vh, rank)
    assert err <= 1.01 * opt + 1e-10 * float(w.norm())


def test_randomized_falls_back_to_the_gram_route_when_it_cannot_settle():
    w = SPECTRA["gaussian"](300, 260, 20)
    u, s, vh = svd_module._randomized(w, 20, 1e-2, max_iter=2)  # the stopping rule needs 3 iterations
    err, opt = _errors(w, u, s, vh, 20)
    assert abs(err - opt) <= 1e-10 * float(w.norm())


def test_randomized_is_deterministic():
    w = SPECTRA["power 0.5"](300, 260, 20)
    first, second = truncated_svd(w, 20, "randomized"), truncated_svd(w, 20, "randomized")
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_balanced_split_of_a_randomized_svd():
    w = SPECTRA["power 1"](400, 300, 30)
    a, b = balanced_svd(w, 30)  # auto: randomized at this size and rank
    assert svd_method((400, 300), 30) == "randomized"
    assert torch.allclose(torch.linalg.svdvals(a), torch.linalg.svdvals(b), rtol=1e-8)
    err, opt = float((a @ b - w).norm()), float(torch.linalg.svdvals(w)[30:].pow(2).sum().sqrt())
    assert err <= 1.01 * opt


@pytest.mark.parametrize("shape,rank,route", [
    ((8, 6), 3, "full"),              # tiny: LAPACK's overhead is the smallest
    ((1024, 1024), 100, "randomized"),
    ((300, 784), 30, "randomized"),   # wide: the same, transposed
    ((1024, 1024), 400, "randomized"),  # R + n/16 = 464: the sketch is still under half the matrix
    ((1024, 1024), 480, "gram"),      # the sketch would be more than half the matrix
    ((4096, 1024), 512, "gram"),
    ((56, 200_000), 4, "gram"),       # a TT-SVD unfolding: one thin Gram beats any sketch
])
def test_route_table(shape, rank, route):
    assert svd_method(shape, rank) == route


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (150, 150), (40, 8), (9, 7), (1, 5)])
@pytest.mark.parametrize("deficient", [False, True])
def test_singular_values_match_svdvals(shape, deficient):
    g = torch.Generator().manual_seed(0)
    m, n = shape
    if deficient:  # rank 3 (or less): the tiny values only to ~sqrt(n u) sigma_1
        w = torch.randn(m, 3, generator=g, dtype=torch.float64) @ torch.randn(3, n, generator=g, dtype=torch.float64)
    else:
        w = torch.randn(m, n, generator=g, dtype=torch.float64)
    s, ref = singular_values(w), torch.linalg.svdvals(w)
    assert s.dtype == torch.float64 and s.shape == ref.shape and bool((s[:-1] >= s[1:]).all())
    # the contract: |s_i^2 - sigma_i^2| <= c n u sigma_1^2
    assert float((s ** 2 - ref ** 2).abs().max()) <= 8 * min(shape) * U64 * float(ref[0]) ** 2
    assert torch.allclose(s, ref, rtol=1e-10, atol=math.sqrt(8 * min(shape) * U64) * float(ref[0]))


def test_singular_values_of_empty_and_float32_input():
    assert singular_values(torch.zeros(0, 4)).shape == (0,)
    w = torch.randn(50, 40)
    assert singular_values(w).dtype == torch.float64
    assert torch.allclose(singular_values(w), torch.linalg.svdvals(w.double()), atol=1e-10)


@pytest.mark.parametrize("call,match", [
    (lambda w: truncated_svd(w, 3, "qr"), "method must be one of"),
    (lambda w: truncated_svd(w, 0), r"outside \[1, 6\]"),
    (lambda w: truncated_svd(w, 7), r"outside \[1, 6\]"),
    (lambda w: truncated_svd(w, 2, tol=0.0), "tolerance"),
    (lambda w: truncated_svd(w.reshape(-1), 2), "2-D"),
    (lambda w: balanced_svd(w, 7), r"outside \[1, 6\]"),
    (lambda w: singular_values(w[None]), "2-D"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(8, 6))
