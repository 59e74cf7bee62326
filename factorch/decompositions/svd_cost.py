"""The one-thread time model of the truncated-SVD routes (``docs/math.md``, "Cost of computing a
decomposition"): which route ``truncated_svd(method="auto")`` takes (``svd_method``), what it is
expected to cost (``svd_seconds``), and the unit the other cost models count in (``GEMM_SECONDS``:
CP-ALS, TT-SVD, progress lines)."""
from __future__ import annotations

from typing import Callable

# Seconds per unit on one thread of the project's CPU (AVX-512, MKL), fitted to torch 2.13
# timings: GEMM per multiply-add (float64; float32 half), SVD per m n^2 and n^3, symmetric
# eigendecomposition with vectors per n^3. Only ratios matter; GPUs favour GEMMs even more.
_GEMM, _SVD_MN2, _SVD_N3, _EIGH_N3, _CALL = 8e-11, 4.65e-10, 6.2e-10, 3.7e-10, 2e-5
_POWER_ITERATIONS = 4  # what the randomized cost assumes (measured: 2-5 to reach 0.5 %)


def sketch_width(n: int, rank: int) -> int:
    """Sketch width ``l = R + p``, ``p = max(10, min(R / 2, n / 16))``: convergence per iteration
    goes with ``sigma_{l+1} / sigma_R``; wider sketches need fewer iterations at about equal GEMM
    work while ``l`` is small against ``n``. Beyond ``R = n / 8`` the ``m l^2`` orthonormalizations
    and ``l^3`` eigenproblems dominate instead, so ``p`` stops growing: at ``R = n / 4``
    (``fc.SVD(0.5)`` on a square layer) ``p = R / 4`` took 28-30 % less time than ``R / 2`` for
    the same 4 iterations, at 1.007x (flat spectrum) and 1.002x (``sigma_k ~ k^-1/2``) the optimal
    error (4096 x 4096, one thread); ``p = R / 8`` needed a fifth iteration."""
    return min(n, rank + max(10, min(rank // 2, n // 16)))


def _thin_cost(m: int, k: int) -> float:
    """Exact SVD of an (m, k) matrix through Cholesky-QR (two Grams, two triangular solves)."""
    return 4 * _GEMM * m * k * k + (_SVD_MN2 + _SVD_N3) * k ** 3 + 8 * _CALL


_COSTS: dict[str, Callable[[int, int, int], float]] = {
    "full": lambda m, n, r: _SVD_MN2 * m * n * n + _SVD_N3 * n ** 3 + _CALL,
    "gram": lambda m, n, r: _GEMM * (m * n * n + m * n * r) + _EIGH_N3 * n ** 3 + _thin_cost(m, r) + 4 * _CALL,
    "randomized": lambda m, n, r: (
        (2 * _POWER_ITERATIONS + 2) * (0.5 * _GEMM * m * n * sketch_width(n, r)     # float32 products
                                       + 2 * _GEMM * m * sketch_width(n, r) ** 2)  # orthonormalizing
        + _EIGH_N3 * sketch_width(n, r) ** 3 + 60 * _CALL),
}


GEMM_SECONDS = _GEMM  # the unit other cost models (CP-ALS, TT-SVD, progress lines) count in


def svd_seconds(shape: tuple[int, int], rank: int) -> tuple[float, str]:
    """``(seconds, route)``: what ``truncated_svd`` of a ``shape`` matrix at ``rank`` is expected to
    take on one thread, by the route ``svd_method`` picks (the cost model it minimises)."""
    route = svd_method(shape, rank)
    return _COSTS[route](max(shape), min(shape), rank), route


def svd_method(shape: tuple[int, int], rank: int) -> str:
    """The route ``truncated_svd(method="auto")`` takes for a ``shape`` matrix at ``rank``: the
    cheapest by ``_COSTS``; ``randomized`` only while the sketch is at most half the small side
    (wider sketches gain little over ``gram`` and converge no faster)."""
    m, n = max(shape), min(shape)
    candidates = ("full", "gram", "randomized") if 2 * sketch_width(n, rank) <= n else ("full", "gram")
    return min(candidates, key=lambda k: _COSTS[k](m, n, rank))
