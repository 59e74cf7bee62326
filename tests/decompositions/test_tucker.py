"""Tucker-2 HOSVD/HOOI, SVD and energy ranks: error bounds and the TensorLy comparison."""
import numpy as np
import pytest
import torch

from factorch.decompositions import balanced_svd, energy_rank, hosvd2, tucker2, tucker2_to_tensor


def _rel(w, core, u, v):
    return float((tucker2_to_tensor(core, u, v) - w).norm() / w.norm())


def _structured(n=48, c=40, k=3, decay=8.0):
    """A kernel with a decaying channel spectrum plus noise, like a trained one."""
    u, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))
    core = torch.randn(n, c, k, k, dtype=torch.float64)
    core *= torch.exp(-torch.arange(n, dtype=torch.float64) / decay)[:, None, None, None]
    core *= torch.exp(-torch.arange(c, dtype=torch.float64) / decay)[None, :, None, None]
    return torch.einsum("abij,na,cb->ncij", core, u, v) + 1e-3 * torch.randn(n, c, k, k, dtype=torch.float64)


KERNELS = {
    "random": lambda: torch.randn(32, 24, 3, 3, dtype=torch.float64),
    "structured": _structured,
    "grouped-like": lambda: torch.randn(16, 64, 5, 5, dtype=torch.float64),
}


@pytest.mark.parametrize("kind", sorted(KERNELS))
@pytest.mark.parametrize("ranks", [(4, 3), (10, 8), (16, 12)])
def test_hooi_no_worse_than_tensorly_partial_tucker(kind, ranks):
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    w = KERNELS[kind]()
    ours = _rel(w, *tucker2(w, ranks))
    with tl.backend_context("numpy"):
        (core, (u, v)), _ = partial_tucker(w.numpy(), rank=list(ranks), modes=[0, 1])
    theirs = _rel(w, torch.from_numpy(np.asarray(core)), torch.from_numpy(np.asarray(u)), torch.from_numpy(np.asarray(v)))
    assert ours <= theirs + 1e-12


@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_hooi_error_bounds(kind):
    w = KERNELS[kind]()
    n, c = w.shape[:2]
    ranks = (n // 3, c // 3)
    hosvd = _rel(w, *hosvd2(w, ranks))
    hooi = _rel(w, *tucker2(w, ranks))
    assert hooi <= hosvd + 1e-12  # HOOI refines HOSVD
    # HOSVD error^2 <= discarded sigma^2 of both unfoldings (docs/math.md, "HOSVD and HOOI")
    s0 = torch.linalg.svdvals(w.reshape(n, -1))
    s1 = torch.linalg.svdvals(w.transpose(0, 1).reshape(c, -1))
    bound = (s0[ranks[0]:].pow(2).sum() + s1[ranks[1]:].pow(2).sum()) / w.pow(2).sum()
    assert hosvd ** 2 <= float(bound) + 1e-12


def test_tucker_error_non_increasing_in_rank():
    w = _structured()
    errors = [_rel(w, *tucker2(w, (r, r))) for r in (2, 4, 8, 16, 32, 40)]
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-2


def test_tucker_factors_orthonormal_and_full_rank_exact():
    w = torch.randn(12, 10, 3, 3, dtype=torch.float64)
    core, u, v = tucker2(w, (5, 4))
    assert torch.allclose(u.T @ u, torch.eye(5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(v.T @ v, torch.eye(4, dtype=torch.float64), atol=1e-10)
    assert _rel(w, *tucker2(w, (12, 10))) < 1e-12


def test_tucker_rejects_bad_ranks():
    with pytest.raises(ValueError, match="outside"):
        tucker2(torch.randn(4, 4, 3, 3), (5, 2))
    with pytest.raises(ValueError, match=r"needs a conv kernel \(N, C, \*k\)"):
        tucker2(torch.randn(4, 4), (2, 2))


def test_balanced_svd_reconstructs_and_validates():
    m = torch.randn(9, 7, dtype=torch.float64)
    a, b = balanced_svd(m, 7)
    assert torch.allclose(a @ b, m, atol=1e-12)
    with pytest.raises(ValueError):
        balanced_svd(m, 8)


def test_energy_rank_is_smallest_meeting_threshold_on_sigma_squared():
    s = torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    total = float((s ** 2).sum())  # 14.25
    for t in (0.5, 0.63, 0.64, 0.9, 0.99, 1.0):
        r = energy_rank(s, t)
        assert float((s[:r] ** 2).sum()) >= t * total - 1e-12
        assert r == 1 or float((s[: r - 1] ** 2).sum()) < t * total
    assert energy_rank(torch.zeros(3), 0.9) == 0
