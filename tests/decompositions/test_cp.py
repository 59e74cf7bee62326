"""CP-ALS: the compressed ALS recovers exact-rank kernels, the compression is used where it loses
little and skipped on flat spectra, and the fit is never worse than TensorLy's parafac (the
algorithm before it) on the same kernel."""
import pytest
import torch

from factorch.decompositions import cp as cp_module
from factorch.decompositions import cp_als, cp_to_tensor


def _exact(dims, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    return cp_to_tensor([torch.randn(d, rank, generator=g, dtype=torch.float64) for d in dims])


def _structured(n, c, seed=0, decay=4.0, noise=1e-3):
    """Decaying channel spectra and a random spatial core, like a trained kernel."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64)).Q
    core = torch.randn(n, c, 3, 3, generator=g, dtype=torch.float64)
    core *= torch.exp(-torch.arange(n, dtype=torch.float64) / decay)[:, None, None, None]
    core *= torch.exp(-torch.arange(c, dtype=torch.float64) / decay)[None, :, None, None]
    w = torch.einsum("abij,na,cb->ncij", core, u, v)
    return w + noise * w.norm() / w.numel() ** 0.5 * torch.randn(n, c, 3, 3, generator=g, dtype=torch.float64)


def _rel(w, factors):
    return float((cp_to_tensor(factors) - w).norm() / w.norm())


@pytest.fixture
def als_shapes(monkeypatch):
    """Records the shape of every tensor ALS runs on (the core first, when compressed)."""
    seen = []
    real = cp_module._als

    def spy(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(cp_module, "_als", spy)
    return seen


@pytest.mark.parametrize("dims,rank", [((24, 20, 3, 3), 6), ((32, 16, 3, 3), 12), ((16, 12, 5, 5), 9)])
def test_compressed_als_recovers_an_exact_rank_kernel(dims, rank, als_shapes):
    w = _exact(dims, rank)
    factors = cp_als(w, rank, restarts=3)
    assert _rel(w, factors) < 1e-6
    assert als_shapes[0] == (rank, rank, *dims[2:])  # ALS ran on the compressed core first


def test_rank_above_the_channels_recovers_without_compression(als_shapes):
    w = _exact((8, 6, 3, 3), 10)
    assert _rel(w, cp_als(w, 10, restarts=3)) < 1e-6
    assert als_shapes[0] == (8, 6, 3, 3)


def test_compression_skipped_on_a_flat_spectrum(als_shapes):
    w = torch.randn(48, 40, 3, 3, dtype=torch.float64)  # random init: the top-16 subspaces hold ~1/6
    cp_als(w, 16)
    assert als_shapes == [(48, 40, 3, 3)]


def test_compression_kept_on_a_decaying_spectrum(als_shapes):
    w = _structured(48, 40)
    cp_als(w, 16)
    assert als_shapes[0] == (16, 16, 3, 3) and set(als_shapes[:-1]) == {(16, 16, 3, 3)}
    assert als_shapes[-1] == (48, 40, 3, 3)  # core sweeps, then the polish on the kernel


@pytest.mark.parametrize("kernel,rank", [("random", 8), ("structured", 8), ("structured", 20)])
def test_fit_no_worse_than_tensorly(kernel, rank):
    w = torch.randn(32, 24, 3, 3, dtype=torch.float64) if kernel == "random" else _structured(32, 24)
    ours = _rel(w, cp_als(w, rank))
    theirs = _rel(w, cp_als(w, rank, algorithm="tensorly"))
    assert ours <= theirs + 1e-9


def test_compress_flag_and_iteration_cap():
    w = _structured(40, 32)
    full = cp_als(w, 8, compress=False)
    short = cp_als(w, 8, compress=False, n_iter_max=3)
    assert _rel(w, full) < _rel(w, short)


def test_bad_algorithm():
    with pytest.raises(ValueError, match="CP algorithm must be one of als, tensorly"):
        cp_als(torch.randn(4, 4, 3, 3), 2, algorithm="nls")
