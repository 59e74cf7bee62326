"""CP (CANDECOMP/PARAFAC) of a 4-way conv kernel by ALS, through TensorLy (methods.md section 3).

TensorLy is imported here and nowhere else, lazily, so ``import factorch`` stays cheap.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor


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
    across the four factors condition fine-tuning best (methods.md section 3.1).
    """
    norms = [f.norm(dim=0) for f in factors]  # each (R,)
    lam = weights * torch.stack(norms).prod(0)  # (R,)
    safe = [torch.where(nrm > 0, nrm, torch.ones_like(nrm)) for nrm in norms]
    root = lam.abs() ** 0.25
    out = [f / nrm * root for f, nrm in zip(factors, safe)]
    out[0] = out[0] * torch.where(lam < 0, -1.0, 1.0).to(out[0])
    return out


def cp_als(
    tensor: Tensor,
    rank: int,
    n_iter_max: int = 100,
    tol: float = 1e-8,
    restarts: int = 1,
    seed: int = 0,
) -> list[Tensor]:
    """Rank-``rank`` CP of a 4-way tensor by ALS: four balanced float64 factors ``[A, B, P, Q]``.

    Defaults are TensorLy's (100 sweeps, tol 1e-8 on the change of the relative error); ALS on an
    unstructured kernel creeps for thousands of sweeps, so more buys little.
    The first run starts from TensorLy's SVD init (random columns pad modes smaller than the
    rank), the ``restarts - 1`` others from seeded random starts; the fit with the smallest
    residual wins. A small ridge (``l2_reg``, relative to the tensor's energy) keeps components
    from diverging against each other, the degeneracy of methods.md section 3.3.
    """
    import numpy as np
    import tensorly as tl
    from tensorly.decomposition import parafac

    if tensor.dim() != 4:
        raise ValueError(f"CP needs a 4-way tensor, got shape {tuple(tensor.shape)}")
    if rank < 1 or restarts < 1:
        raise ValueError(f"CP rank and restarts must be >= 1, got rank={rank}, restarts={restarts}")
    x = tensor.detach().to(dtype=torch.float64)  # on its own device: TensorLy's pytorch backend keeps it
    norm = float(x.norm())
    if norm == 0.0 or not math.isfinite(norm):
        raise ValueError(f"CP needs a finite, non-zero tensor (norm {norm})")
    scaled = x / norm  # unit norm: tolerances and the ridge do not depend on scale
    best, best_err = None, math.inf
    # TensorLy warns when the SVD init has fewer vectors than the rank (kh = 3 < R): it pads them
    # with random columns, which is what we want.
    with tl.backend_context("pytorch"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD", category=UserWarning)
        for attempt in range(restarts):
            cp = parafac(
                scaled,
                rank,
                n_iter_max=n_iter_max,
                init="svd" if attempt == 0 else "random",
                tol=tol,
                random_state=np.random.RandomState(seed + attempt),
                l2_reg=1e-12,
                normalize_factors=True,
            )
            weights = cp.weights.to(torch.float64)
            factors = [f.to(torch.float64) for f in cp.factors]
            err = float((cp_to_tensor([factors[0] * weights, *factors[1:]]) - x / norm).norm())
            if err < best_err:
                best, best_err = (weights, factors), err
    weights, factors = best
    return _balance(weights * norm, factors)
