"""CP (CANDECOMP/PARAFAC) of a conv kernel by alternating least squares (``docs/math.md``, "CP convolution").

``W[n, c, i, j] ~= sum_r A[n, r] B[c, r] P[i, r] Q[j, r]`` for a 2-D kernel; a kernel with ``d``
spatial axes (1-D: ``(N, C, k)``, 3-D: ``(N, C, kd, kh, kw)``) has one spatial factor per axis,
``P_1 .. P_d``. Two algorithms:

* ``"als"`` (default, ours, torch on the kernel's device): what costs time in CP-ALS is the
  MTTKRP, the tensor times the Khatri-Rao product of the other factors, once per mode and sweep.
  Here one sweep costs two GEMMs over the kernel (``_sweep``): ``X_(0) (B . P . Q)`` updates A, then
  ``Y = A^T X_(0)`` serves B and the spatial factors (their MTTKRPs are small contractions of Y). Bro's line search
  extrapolates the factors along their last change each sweep; its error check reuses the GEMM the
  next A-update needs, so an accepted step is free. With ``compress`` the channel modes are first
  projected on their leading ``R`` singular vectors (HOSVD; Bro & Andersson's CANDELINC), ALS runs
  on the small core, the factors are mapped back and a few sweeps on the full kernel polish them.
  That is kept only if the projection lost little against the fit's error (``_COMPRESS_SHARE``):
  the best CP of a flat, random-init kernel does not live in those subspaces, so there the full
  kernel is used directly.
  On kh = kw = 3 < R the spatial modes are never compressed;
* ``"tensorly"``: TensorLy's ``parafac`` (100 sweeps from its SVD init; the code before this one,
  kept to measure against; 4-way kernels only). TensorLy is imported lazily, so ``import factorch`` stays cheap.

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

from factorch.decompositions.svd_cost import GEMM_SECONDS

CP_ALGORITHMS = ("als", "tensorly")
# Sweeps: on the full kernel without compression, on the compressed core (the first _PROBE_SWEEPS
# of them decide early whether it is worth it), and polishing on the kernel after it.
_SWEEPS, _CORE_SWEEPS, _PROBE_SWEEPS, _POLISH_SWEEPS = 300, 1000, 20, 30
# Compression is tried when it keeps at least 90 % of the energy, and kept when the energy it
# discards is at most half the compressed fit's squared error (measured: the polish recovers little
# of it, but the core's cheaper sweeps buy more than that back -- benchmarks/cp_speed.py).
_COMPRESS_TRY, _COMPRESS_SHARE = 0.1, 0.5
_RIDGE = 1e-12  # l2 on the normal equations of the unit-norm kernel: keeps them solvable


def _khatri_rao(*factors: Tensor) -> Tensor:
    """(prod of the rows, R): row (i_1, i_2, ...) holds ``F_1[i_1] * F_2[i_2] * ...``, row-major: the
    column order of the unfolding ``X_(k)`` of the modes after k."""
    out = factors[0]
    for f in factors[1:]:
        out = (out[:, None, :] * f[None, :, :]).reshape(-1, out.shape[1])
    return out


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
    """Rebuild ``W[n, c, i, ...] = sum_r A[n, r] B[c, r] P_1[i, r] ...`` from its (dim, R) factors
    ``[A, B, P_1, .., P_d]``: (N, C, k_1, .., k_d)."""
    a = factors[0]
    # Khatri-Rao of the other factors, then one matmul: a many-operand einsum contracts pairwise
    # left to right through an (N, C, R) intermediate (3 GB and ~10 s for 512x512 at R = 1500).
    kr = _khatri_rao(*factors[1:])  # (C prod(k), R)
    return (a @ kr.T).reshape(a.shape[0], *(f.shape[0] for f in factors[1:]))


def _balance(weights: Tensor, factors: list[Tensor]) -> list[Tensor]:
    """Fold the component weights into the factors so each column carries ``lambda_r^(1/n)`` (n
    factors: 4 for a 2-D kernel).

    lambda_r = w_r * prod_k ||f_k[:, r]||; its sign goes to the first factor. Equal column norms
    across the factors condition fine-tuning best (``docs/math.md``, "CP convolution").
    """
    norms = [f.norm(dim=0) for f in factors]  # each (R,)
    lam = weights * torch.stack(norms).prod(0)  # (R,)
    safe = [torch.where(nrm > 0, nrm, torch.ones_like(nrm)) for nrm in norms]
    root = lam.abs() ** (1.0 / len(factors))
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


def _hadamard(grams: list[Tensor], skip: int) -> Tensor:
    """The element-wise product of every Gram matrix but ``grams[skip]``, in order."""
    out = None
    for k, g in enumerate(grams):
        if k != skip:
            out = g if out is None else out * g
    return out


def _spatial_mttkrp(z: Tensor, spatial: list[Tensor], j: int) -> Tensor:
    """(k_j, R): ``z`` (R, k_1, .., k_d) contracted with every spatial factor but the j-th."""
    t = z
    for i in reversed(range(len(spatial))):  # from the last axis: the axes before stay where they are
        if i != j:
            shape = [1] * t.dim()
            shape[0], shape[i + 1] = spatial[i].shape[1], spatial[i].shape[0]
            t = (t * spatial[i].T.reshape(shape)).sum(i + 1)
    return t.T


def _sweep(x0: Tensor, shape: tuple[int, ...], factors: list[Tensor],
           m_a: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
    """One ALS sweep A, B, P_1, .., P_d on ``x0 = X_(0)`` (N, C prod(k)), given ``m_a = X_(0) (B . P_1 . ..)``.

    Returns the factors, the last factor's MTTKRP and the Hadamard product of all Gram matrices,
    for the fit. ``Y = A^T X_(0)`` (R, C, prod(k)) is the one pass over the kernel after the
    A-update: B's MTTKRP contracts it with the spatial Khatri-Rao product, and ``Z = B^T Y``
    (R, k_1, .., k_d) gives the spatial factors'.
    """
    c, ks = shape[1], shape[2:]
    a, b, spatial = factors[0], factors[1], list(factors[2:])
    r = a.shape[1]
    grams = [f.T @ f for f in factors]
    a = _solve(m_a, _hadamard(grams, 0))
    grams[0] = a.T @ a
    # products of many tiny matrices: elementwise and a sum (torch's CPU bmm loops over them)
    y = (a.T @ x0).reshape(r, c, -1)                                        # (R, C, prod k)
    kr = _khatri_rao(*spatial).T.reshape(r, 1, -1)                          # (R, 1, prod k)
    b = _solve((y * kr).sum(2).T, _hadamard(grams, 1))                      # MTTKRP (C, R)
    grams[1] = b.T @ b
    z = (y * b.T[:, :, None]).sum(1).reshape(r, *ks)                        # (R, k_1, .., k_d)
    m_last = None
    for j in range(len(spatial)):
        m_last = _spatial_mttkrp(z, spatial, j)                             # MTTKRP (k_j, R)
        spatial[j] = _solve(m_last, _hadamard(grams, 2 + j))
        grams[2 + j] = spatial[j].T @ spatial[j]
    return [a, b, *spatial], m_last, _hadamard(grams, -1)


def _error(norm2: float, factors: list[Tensor], inner: float, grams: Optional[Tensor] = None) -> float:
    """``||X - X_hat|| / ||X||`` from ``<X, X_hat>`` and ``||X_hat||^2 = sum(A'A * B'B * P'P * ..)``."""
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
        err = _error(norm2, factors, float((m_q * factors[-1]).sum()), grams)
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
    for mode in range(x.dim()):
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
        core = torch.einsum("nc...,na,cb->ab...", x, u, v)  # (N', C', *k)
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
        factors = [u @ factors[0], v @ factors[1], *factors[2:]]
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
    """Rank-``rank`` CP of a conv kernel ``(N, C, *k)`` (1 to 3 spatial axes) by ALS: balanced float64
    factors ``[A, B, P_1, .., P_d]`` (``[A, B, P, Q]`` for a 2-D kernel).

    Float64 on the tensor's device. ``algorithm``: ``"als"`` (ours, see the module docstring) or
    ``"tensorly"``. ``n_iter_max``: sweeps (default: 300 on the full kernel, or 1000 on a compressed
    core plus 30 polishing sweeps; TensorLy's 100 for ``"tensorly"``); ``tol`` stops when the
    relative error changes by less. The first run starts from the SVD init, the ``restarts - 1``
    others from seeded random factors; the fit with the smallest residual wins. A tiny ridge keeps
    diverging, cancelling components (CP degeneracy: ``docs/math.md``, "CP convolution") in check.
    """
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"CP algorithm must be one of {', '.join(CP_ALGORITHMS)}, got {algorithm!r}")
    if tensor.dim() < 3 or (algorithm == "tensorly" and tensor.dim() != 4):
        need = " with 2 spatial axes for tensorly" if algorithm == "tensorly" else ""
        raise ValueError(f"CP needs a conv kernel (N, C, *k){need}, got shape {tuple(tensor.shape)}")
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
