"""CP (CANDECOMP/PARAFAC) of a 4-way conv kernel by alternating least squares (``docs/math.md``, "CP convolution").

``W[n, c, i, j] ~= sum_r A[n, r] B[c, r] P[i, r] Q[j, r]``. Two algorithms:

* ``"als"`` (default, ours, torch on the kernel's device): what costs time in CP-ALS is the
  MTTKRP, the tensor times the Khatri-Rao product of the other factors, once per mode and sweep.
  Here one sweep costs two GEMMs over the kernel (``_sweep``): ``X_(0) (B . P . Q)`` updates A, then
  ``Y = A^T X_(0)`` serves B, P and Q (their MTTKRPs are small contractions of Y). Bro's line search
  extrapolates the factors along their last change each sweep; its error check reuses the GEMM the
  next A-update needs, so an accepted step is free. With ``compress`` the channel modes are first
  projected on their leading ``R`` singular vectors (HOSVD; Bro & Andersson's CANDELINC), ALS runs
  on the small core, the factors are mapped back and a few sweeps on the full kernel polish them.
  That is kept only if the projection lost little against the fit's error (``_COMPRESS_SHARE``):
  the best CP of a flat, random-init kernel does not live in those subspaces, so there the full
  kernel is used directly.
  On kh = kw = 3 < R the spatial modes are never compressed;
* ``"tensorly"``: TensorLy's ``parafac`` (100 sweeps from its SVD init; the code before this one,
  kept to measure against). TensorLy is imported lazily, so ``import factorch`` stays cheap.

Both start from the same SVD init (leading singular vectors per mode, TensorLy's random columns
where a mode is smaller than the rank); restarts from random factors keep the best fit.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from factorch.decompositions.svd import GEMM_SECONDS

CP_ALGORITHMS = ("als", "tensorly")
# Sweeps: on the full kernel without compression, on the compressed core (the first _PROBE_SWEEPS
# of them decide early whether it is worth it), and polishing on the kernel after it.
_SWEEPS, _CORE_SWEEPS, _PROBE_SWEEPS, _POLISH_SWEEPS = 300, 1000, 20, 30
# Compression is tried when it keeps at least 90 % of the energy, and kept when the energy it
# discards is at most half the compressed fit's squared error (measured: the polish recovers little
# of it, but the core's cheaper sweeps buy more than that back -- benchmarks/cp_speed.py).
_COMPRESS_TRY, _COMPRESS_SHARE = 0.1, 0.5
_RIDGE = 1e-12  # l2 on the normal equations of the unit-norm kernel: keeps them solvable


def cp_als_seconds(shape: Sequence[int], rank: int) -> float:
    """Expected one-thread seconds of ``cp_als`` on a kernel of ``shape`` ``(N, C, k_1, ...)`` at
    ``rank`` R (``docs/math.md``, "Cost of computing a decomposition"): ``_SWEEPS`` sweeps, each
    three ``N x (C k) x R`` GEMMs (the MTTKRPs and the line search's trial), the factors' Gram
    matrices and solves (``~(N + C + sum k) R^2``) and four ``R x R`` Choleskys. An upper estimate:
    a fit that converges, or runs on a compressed core, stops sooner."""
    n, c, *k = (int(v) for v in shape)
    per_sweep = 3 * n * c * math.prod(k) * rank + 5 * (n + c + sum(k)) * rank ** 2 + 3 * rank ** 3
    return _SWEEPS * GEMM_SECONDS * per_sweep


def cp_to_tensor(factors: list[Tensor]) -> Tensor:
    """Rebuild ``W[n, c, i, j] = sum_r A[n, r] B[c, r] P[i, r] Q[j, r]`` from four (dim, R) factors."""
    a, b, p, q = factors
    # Khatri-Rao of the last three factors, then one matmul: a 4-operand einsum contracts pairwise
    # left to right through an (N, C, R) intermediate (3 GB and ~10 s for 512x512 at R = 1500).
    kr = (b[:, None, None, :] * p[None, :, None, :] * q[None, None, :, :]).reshape(-1, a.shape[1])  # (C kh kw, R)
    return (a @ kr.T).reshape(a.shape[0], b.shape[0], p.shape[0], q.shape[0])  # (N, C, kh, kw)


def _balance(weights: Tensor, factors: list[Tensor]) -> list[Tensor]:
    """Fold the component weights into the factors so each column carries ``lambda_r^(1/4)``.

    lambda_r = w_r * prod_k ||f_k[:, r]||; its sign goes to the first factor. Equal column norms
    across the four factors condition fine-tuning best (``docs/math.md``, "CP convolution").
    """
    norms = [f.norm(dim=0) for f in factors]  # each (R,)
    lam = weights * torch.stack(norms).prod(0)  # (R,)
    safe = [torch.where(nrm > 0, nrm, torch.ones_like(nrm)) for nrm in norms]
    root = lam.abs() ** 0.25
    out = [f / nrm * root for f, nrm in zip(factors, safe)]
    out[0] = out[0] * torch.where(lam < 0, -1.0, 1.0).to(out[0])
    return out


# ---- our ALS ---------------------------------------------------------------------------------
def _solve(mttkrp: Tensor, gram: Tensor) -> Tensor:
    """``F = M (V + ridge I)^-1`` for the (R, R) Hadamard product ``V`` of the other Grams."""
    v = gram.clone()
    v.diagonal().add_(_RIDGE)
    low, info = torch.linalg.cholesky_ex(v)
    if int(info) == 0:
        return torch.cholesky_solve(mttkrp.T, low).T
    return torch.linalg.lstsq(v, mttkrp.T).solution.T  # singular: least-norm solution


def _khatri_rao(b: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """(C kh kw, R): row (c, i, j) holds ``B[c] * P[i] * Q[j]``, the column order of ``X_(0)``."""
    return (b[:, None, None, :] * p[None, :, None, :] * q[None, None, :, :]).reshape(-1, b.shape[1])


def _sweep(x0: Tensor, shape: tuple[int, ...], factors: list[Tensor],
           m_a: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
    """One ALS sweep A, B, P, Q on ``x0 = X_(0)`` (N, C kh kw), given ``m_a = X_(0) (B . P . Q)``.

    Returns the factors, ``X_(3) (A . B . P)`` (kw, R) and the Hadamard product of the four Gram
    matrices, for the fit. ``Y = A^T X_(0)`` (R, C, kh kw)
    is the one pass over the kernel after the A-update: B's MTTKRP contracts it with ``P . Q``, and
    ``Z = B^T Y`` (R, kh, kw) gives P's and Q's.
    """
    _, c, kh, kw = shape
    a, b, p, q = factors
    r = a.shape[1]
    ga, gb, gp, gq = (f.T @ f for f in factors)
    a = _solve(m_a, gb * gp * gq)
    ga = a.T @ a
    # products of many tiny matrices: elementwise and a sum (torch's CPU bmm loops over them)
    y = (a.T @ x0).reshape(r, c, kh * kw)                                   # (R, C, kh kw)
    pq = (p.T[:, :, None] * q.T[:, None, :]).reshape(r, 1, kh * kw)         # (R, 1, kh kw)
    b = _solve((y * pq).sum(2).T, ga * gp * gq)                             # MTTKRP (C, R)
    gb = b.T @ b
    z = (y * b.T[:, :, None]).sum(1).reshape(r, kh, kw)                     # (R, kh, kw)
    p = _solve((z * q.T[:, None, :]).sum(2).T, ga * gb * gq)                # MTTKRP (kh, R)
    gp = p.T @ p
    m_q = (z * p.T[:, :, None]).sum(1).T                                    # MTTKRP (kw, R)
    gabp = ga * gb * gp
    q = _solve(m_q, gabp)
    return [a, b, p, q], m_q, gabp * (q.T @ q)


def _error(norm2: float, factors: list[Tensor], inner: float, grams: Optional[Tensor] = None) -> float:
    """``||X - X_hat|| / ||X||`` from ``<X, X_hat>`` and ``||X_hat||^2 = sum(A'A * B'B * P'P * Q'Q)``."""
    grams = math.prod(f.T @ f for f in factors) if grams is None else grams
    return math.sqrt(max(norm2 - 2.0 * inner + float(grams.sum()), 0.0) / norm2)


def _als(x: Tensor, factors: list[Tensor], sweeps: int, tol: float) -> tuple[list[Tensor], float]:
    """ALS with Bro's line search (TensorLy's schedule: jump ``k^(1/p)``, p grows after 4 misses).

    Stops after ``sweeps`` or when the relative error changes by less than ``tol``.
    """
    shape = tuple(x.shape)
    x0 = x.reshape(shape[0], -1)
    norm2 = float(torch.linalg.vector_norm(x)) ** 2  # no (x * x) temporary
    m_a = x0 @ _khatri_rao(*factors[1:])
    power, misses, prev = 2.0, 0, math.inf
    err = math.inf
    for k in range(sweeps):
        old = factors
        factors, m_q, grams = _sweep(x0, shape, factors, m_a)
        err = _error(norm2, factors, float((m_q * factors[3]).sum()), grams)
        m_a = None
        if k >= 2:  # extrapolate along the sweep's change; accept if the fit improves
            jump = (k + 1) ** (1.0 / power)
            trial = [f0 + (f1 - f0) * jump for f0, f1 in zip(old, factors)]
            m_trial = x0 @ _khatri_rao(*trial[1:])
            trial_err = _error(norm2, trial, float((m_trial * trial[0]).sum()))
            if trial_err < err:
                factors, err, m_a, misses = trial, trial_err, m_trial, 0
            else:
                misses += 1
                if misses == 4:
                    power, misses = power + 1.0, 0
        if m_a is None:
            m_a = x0 @ _khatri_rao(*factors[1:])
        if abs(prev - err) < tol:
            break
        prev = err
    return factors, err


def _leading(x: Tensor, mode: int, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` leading left singular vectors of the mode-``mode`` unfolding, and all its
    squared singular values (descending), from the eigendecomposition of its small Gram matrix."""
    unfolding = x.movedim(mode, 0).reshape(x.shape[mode], -1)
    vals, vecs = torch.linalg.eigh(unfolding @ unfolding.T)  # ascending
    return vecs[:, -count:].flip(-1), vals.flip(0).clamp_min(0.0)


def _svd_init(x: Tensor, rank: int, rng: np.random.RandomState) -> list[Tensor]:
    """TensorLy's SVD init, the same numbers: per mode the leading left singular vectors (the first
    mode scaled by the singular values), padded with uniform random columns from ``rng`` (mode by
    mode, as TensorLy draws them) where the mode is smaller than R. Which local minimum ALS ends
    in depends on those columns; drawing TensorLy's makes the two algorithms comparable."""
    factors = []
    for mode in range(4):
        k = min(rank, x.shape[mode])
        vecs, vals = _leading(x, mode, k)
        if mode == 0:
            vecs = vecs * vals[:k].sqrt()
        if k < rank:
            pad = torch.from_numpy(rng.random_sample((x.shape[mode], rank - k))).to(vecs)
            vecs = torch.cat([vecs, pad], dim=1)
        factors.append(vecs)
    return factors


def _random_init(x: Tensor, rank: int, rng: np.random.RandomState) -> list[Tensor]:
    """TensorLy's random init: uniform [0, 1) factors."""
    return [torch.from_numpy(rng.random_sample((d, rank))).to(x) for d in x.shape]


def _factorch_als(x: Tensor, rank: int, n_iter_max: Optional[int], tol: float, attempt: int, seed: int,
                  compress: bool) -> list[Tensor]:
    """Our ALS on the unit-norm ``x``, through the compressed core where that loses little."""
    start = _svd_init if attempt == 0 else _random_init
    init = lambda t: start(t, rank, np.random.RandomState(seed + attempt))  # noqa: E731
    n, c = x.shape[:2]
    if compress and (rank < n or rank < c):
        u, v = _leading(x, 0, min(rank, n))[0], _leading(x, 1, min(rank, c))[0]  # (N, N'), (C, C')
        core = torch.einsum("ncij,na,cb->abij", x, u, v)  # (N', C', kh, kw)
        lost2 = max(1.0 - float((core * core).sum()), 0.0)  # ||X - X x_0 UU^T x_1 VV^T||^2, ||X|| = 1
        if lost2 > _COMPRESS_TRY:  # a flat spectrum (random init): the CP factors live elsewhere
            return _als(x, init(x), n_iter_max or _SWEEPS, tol)[0]
        factors, sweeps = init(core), n_iter_max or _CORE_SWEEPS
        probe = min(_PROBE_SWEEPS, sweeps)
        for budget in (probe, sweeps - probe):  # decide after a few sweeps, and again at the end
            if budget:
                factors, core_err = _als(core, factors, budget, tol)
            err2 = lost2 + core_err ** 2 * (1.0 - lost2)  # the two parts are orthogonal
            if lost2 > _COMPRESS_SHARE * err2:  # the error only falls: give up as early as possible
                return _als(x, init(x), n_iter_max or _SWEEPS, tol)[0]
        factors = [u @ factors[0], v @ factors[1], factors[2], factors[3]]
        return _als(x, factors, _POLISH_SWEEPS, tol)[0]
    return _als(x, init(x), n_iter_max or _SWEEPS, tol)[0]


# ---- TensorLy (before) -----------------------------------------------------------------------
def _tensorly_als(x: Tensor, rank: int, n_iter_max: Optional[int], tol: float, attempt: int, seed: int,
                  compress: bool) -> list[Tensor]:
    """TensorLy's ``parafac`` on the pytorch backend (works on CUDA tensors too)."""
    import tensorly as tl
    from tensorly.decomposition import parafac

    # TensorLy warns when the SVD init has fewer vectors than the rank (kh = 3 < R): it pads them
    # with random columns, which is what we want.
    with tl.backend_context("pytorch"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD", category=UserWarning)
        cp = parafac(x, rank, n_iter_max=n_iter_max or 100, init="svd" if attempt == 0 else "random", tol=tol,
                     random_state=np.random.RandomState(seed + attempt), l2_reg=_RIDGE, normalize_factors=True)
    factors = [f.to(torch.float64) for f in cp.factors]
    return [factors[0] * cp.weights.to(torch.float64), *factors[1:]]


_ALGORITHMS = {"als": _factorch_als, "tensorly": _tensorly_als}


def cp_als(
    tensor: Tensor,
    rank: int,
    n_iter_max: Optional[int] = None,
    tol: float = 1e-8,
    restarts: int = 1,
    seed: int = 0,
    algorithm: str = "als",
    compress: bool = True,
) -> list[Tensor]:
    """Rank-``rank`` CP of a 4-way tensor by ALS: four balanced float64 factors ``[A, B, P, Q]``.

    Float64 on the tensor's device. ``algorithm``: ``"als"`` (ours, see the module docstring) or
    ``"tensorly"``. ``n_iter_max``: sweeps (default: 300 on the full kernel, or 1000 on a compressed
    core plus 30 polishing sweeps; TensorLy's 100 for ``"tensorly"``); ``tol`` stops when the
    relative error changes by less. The first run starts from the SVD init, the ``restarts - 1``
    others from seeded random factors; the fit with the smallest residual wins. A tiny ridge keeps
    diverging, cancelling components (CP degeneracy: ``docs/math.md``, "CP convolution") in check.
    """
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"CP algorithm must be one of {', '.join(CP_ALGORITHMS)}, got {algorithm!r}")
    if tensor.dim() != 4:
        raise ValueError(f"CP needs a 4-way tensor, got shape {tuple(tensor.shape)}")
    if rank < 1 or restarts < 1:
        raise ValueError(f"CP rank and restarts must be >= 1, got rank={rank}, restarts={restarts}")
    x = tensor.detach().to(dtype=torch.float64)  # on its own device
    norm = float(x.norm())
    if norm == 0.0 or not math.isfinite(norm):
        raise ValueError(f"CP needs a finite, non-zero tensor (norm {norm})")
    scaled = x / norm  # unit norm: tolerances and the ridge do not depend on scale
    best, best_err = None, math.inf
    for attempt in range(restarts):
        factors = _ALGORITHMS[algorithm](scaled, rank, n_iter_max, tol, attempt, seed, compress)
        err = float((cp_to_tensor(factors) - scaled).norm())
        if err < best_err:
            best, best_err = factors, err
    return _balance(torch.full((rank,), norm, dtype=torch.float64, device=x.device), best)
