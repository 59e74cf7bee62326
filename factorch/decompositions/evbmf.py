"""Empirical variational Bayesian matrix factorisation rank (Nakajima et al., JMLR 2013).

``docs/math.md``, "EVBMF". Differences from the widely copied VBMF port, each a bug it has:
* tau-bar is the exact root of ``Phi(tau) + Phi(tau / alpha) = 0``, not ``2.5129 * sqrt(alpha)``;
* the matrix is first scaled to unit mean square entry and sigma^2 is searched on a log grid, then
  refined by golden section: the rank no longer depends on the weights' scale (the port's absolute
  ``xatol = 1e-5`` finds sigma^2 ~ 1e-5 only to within 100%);
* L > M is handled by transposing (the rank is the same).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from factorch.decompositions.svd import singular_values


def _phi(z: float) -> float:
    return math.log1p(z) / z - 0.5


@lru_cache(maxsize=512)
def tau_bar(alpha: float) -> float:
    """The unique zero of ``Phi(tau) + Phi(tau / alpha)``, ``Phi(z) = log(1 + z) / z - 1/2``, 0 < alpha <= 1.

    The sum falls monotonically from 1 (tau -> 0) to -1 (tau -> inf), so bisection on log tau is
    safe. tau_bar(1) = 2.5129.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    lo, hi = math.log(1e-12), math.log(1e8)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        t = math.exp(mid)
        if _phi(t) + _phi(t / alpha) > 0.0:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """Posterior signal-to-noise of kept components: 0.5 (x - (1+a) + sqrt((x - (1+a))^2 - 4a))."""
    d = x - (1.0 + alpha)
    return 0.5 * (d + np.sqrt(np.maximum(d * d - 4.0 * alpha, 0.0)))


def _objective(sigma2: np.ndarray, s2: np.ndarray, m: int, alpha: float, x_bar: float) -> np.ndarray:
    """Omega(sigma^2) (``docs/math.md``, "EVBMF") for a batch of sigma^2 values (all L values used)."""
    x = s2[None, :] / (m * sigma2[:, None])  # (S, H)
    big = x > x_bar
    tau = _tau(np.where(big, x, x_bar + 1.0), alpha)  # placeholder keeps sqrt/log finite off-mask
    small_terms = np.where(big, 0.0, x - np.log(x))
    big_terms = np.where(
        big, x - tau + np.log((1.0 + tau) / x) + alpha * np.log1p(tau / alpha), 0.0
    )
    return (small_terms + big_terms).sum(1)


def evbmf(matrix: Tensor | np.ndarray) -> int:
    """EVBMF rank of a 2-D matrix: the number of singular values above the EVB threshold.

    Invariant to scaling and transposing the matrix; 0 for pure Gaussian noise; never more than
    ``min(L, M)``. Callers must handle 0 (the matrix looks like noise).
    """
    y = torch.as_tensor(matrix).detach().to(dtype=torch.float64)  # on its device until the Gram's eigenvalues
    if y.dim() != 2:
        raise ValueError(f"evbmf needs a 2-D matrix, got shape {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("evbmf got a matrix with NaN or Inf entries")
    if min(y.shape) == 0:
        return 0
    return evbmf_rank(singular_values(y), tuple(y.shape))


def evbmf_rank(singular_values: Tensor, shape: tuple[int, int]) -> int:
    """EVBMF rank from the singular values of an ``shape`` matrix (all ``min(shape)`` of them,
    descending): what ``evbmf`` computes once it has them. Rank rules call this with the spectra
    ``factorch.rank`` computed once per unfolding."""
    l, m = sorted(int(v) for v in shape)  # L <= M: the rank of the transpose is the same
    s = singular_values.detach().to(device="cpu", dtype=torch.float64)
    if l == 0 or s.numel() == 0 or float(s.max()) == 0.0:
        return 0
    # unit mean square entry (||Y||_F^2 = sum sigma^2): scale-free from here on. (L,), descending
    s2 = (s * s / (float((s * s).sum()) / (l * m))).numpy()
    s = np.sqrt(s2)
    alpha = l / m
    t_bar = tau_bar(alpha)
    x_bar = (1.0 + t_bar) * (1.0 + alpha / t_bar)

    # Search bounds for sigma^2 (Nakajima et al. 2013, Theorem 13 / the port's bounds).
    hi = float(s2.sum()) / (l * m)  # == 1 after scaling
    h_bar = min(math.ceil(l / (1.0 + alpha)) - 1, l - 1)  # components that may be signal
    tail = s2[h_bar:]
    lo = max(float(tail[0]) / (m * x_bar), float(tail.mean()) / m, hi * 1e-12)
    if lo >= hi:
        lo = hi * 1e-6
    # Omega is piecewise smooth with kinks where a component crosses the threshold: a dense log
    # grid finds the right basin, golden section polishes inside it.
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), 512))
    values = _objective(grid, s2, m, alpha, x_bar)
    k = int(np.argmin(values))
    a, b = math.log(grid[max(k - 1, 0)]), math.log(grid[min(k + 1, len(grid) - 1)])
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):
        c, d = b - golden * (b - a), a + golden * (b - a)
        fc, fd = _objective(np.exp(np.array([c, d])), s2, m, alpha, x_bar)
        if fc <= fd:
            b = d
        else:
            a = c
    sigma2 = math.exp(0.5 * (a + b))
    if _objective(np.array([sigma2]), s2, m, alpha, x_bar)[0] > values[k]:
        sigma2 = float(grid[k])
    threshold = math.sqrt(m * sigma2 * x_bar)
    return min(int((s > threshold).sum()), l)
