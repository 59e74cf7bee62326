"""Whitening a layer's input mode by its input statistics (SVD-LLM, Wang et al. 2024).

With ``C = E[x x^T]`` the input second moment and ``C = S S^T`` its Cholesky factorization, a
weight's output error on those inputs is a weighted weight error:
``E||(W - W_hat) x||^2 = ||(W - W_hat) S||_F^2``. Factorizing the whitened ``W S`` and multiplying
the input-side factor by ``S^-1`` afterwards therefore minimises the output error; for a matrix
the discarded singular values of ``W S`` are exactly that error (Eckart-Young on ``W S``).

Sequential ("asymmetric") form (Zhang et al., TPAMI 2016, "Accelerating very deep convolutional
networks", section 3.3): the factorized layer sees the inputs ``x~`` that the already factorized
layers before it produce, while its target stays the dense layer's output on the dense input
``x``. With ``C~ = E[x~ x~^T] = S~ S~^T`` and ``M = E[x x~^T]``,
``E||W x - W_hat x~||^2 = const + ||(W M S~^-T - W_hat S~)||_F^2``, so one factorizes
``W A`` with ``A = M S~^-T`` and un-whitens with ``S~^-1``; without upstream changes (``x~ = x``)
``A = S`` and this is the plain form. Damping ``delta = lambda mean(diag C) I`` is added to ``C~``
and to ``M`` (the ridge ``delta ||W - W_hat||^2`` pulls towards the dense weight), so at full rank
the plain form reproduces ``W`` exactly, damped or not.

Everything here is float64 on the statistics' device. Math: ``docs/math.md``, "Data-aware factors".
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

MAX_DAMPING = 1e6  # lambda beyond this means C is not a usable second moment (checked by the caller)


def damped_cholesky(c: Tensor, damping: float) -> tuple[Tensor, float]:
    """Lower-triangular ``S`` with ``S S^T = C + lambda mean(diag C) I`` and the ``lambda`` used.

    ``lambda`` starts at ``damping`` and grows tenfold (from at least ``1e-12``) until the Cholesky
    factorization succeeds: dead channels (zero rows) and fewer samples than channels make ``C``
    singular. ``C`` must be symmetric, finite and not all zero (``ValueError`` otherwise)."""
    if c.dim() != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"a second-moment matrix must be square, got shape {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()):
        raise ValueError("the second-moment matrix has NaN or Inf values")
    scale = float(c.diagonal().mean())
    if not scale > 0.0:
        raise ValueError("the second-moment matrix is zero: the inputs are all zero")
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    lam = float(damping)
    while True:
        s, info = torch.linalg.cholesky_ex(c + lam * scale * eye if lam > 0 else c)
        if int(info) == 0 and bool(torch.isfinite(s).all()):
            return s, lam
        lam = max(lam * 10.0, 1e-12)
        if lam > MAX_DAMPING:  # cannot happen for a symmetric PSD C; guards against a broken one
            raise ValueError("the second-moment matrix is not positive semi-definite")


def whitening_transform(s: Tensor, cross: Optional[Tensor] = None, delta: float = 0.0) -> Tensor:
    """``A`` of the module docstring: ``S`` itself (plain form, ``cross`` None), or
    ``(M + delta I) S~^-T`` for the sequential form, ``S~`` the damped Cholesky factor of ``C~``."""
    if cross is None:
        return s
    eye = torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
    # A S~^T = M + delta I  <=>  S~ A^T = (M + delta I)^T: one triangular solve
    return torch.linalg.solve_triangular(s, (cross + delta * eye).T, upper=False).T


def unwhiten(rows: Tensor, s: Tensor) -> Tensor:
    """``rows S^-1`` for a (R, C) input-side factor fitted to the whitened operand (triangular solve)."""
    return torch.linalg.solve_triangular(s, rows, upper=False, left=False)
