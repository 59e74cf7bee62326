"""Tucker decompositions of a conv kernel by HOOI (``docs/math.md``, "HOSVD and HOOI").

One HOOI serves both layers: it factorizes any subset of the modes of the 3-way tensor
``(N, C, D = kh kw)``. A mode whose rank equals its size keeps the identity (any orthonormal
basis of the whole space is optimal), so

* Tucker-2 (Kim et al. 2016) is ``hooi(W as (N, C, D), (R_out, R_in, D))``:
  ``W[n, c, i, j] ~= sum_{a, b} U[n, a] G[a, b, i, j] V[c, b]``;
* Tucker-3 (the spatial mode too: Gobieski et al.'s course project) is ``hooi(W as (N, C, D),
  (N', C', D'))``: ``W ~= G x_0 W_N x_1 W_C x_2 W_D``.

HOSVD gives the start; each sweep sets every factorized mode's factor to the leading left singular
vectors of the tensor multiplied by the other factors' transposes (alternating least squares).
The fit ``||G||^2`` never falls, so HOOI's error is never above HOSVD's.

Stopping (``stop="residual"``, the default): after a sweep, when the residual
``||W - W_hat||^2 = ||W||^2 - ||G||^2`` fell by less than ``tol`` of itself. The relative error
then changes by about ``tol / 2`` per sweep; HOOI converges linearly, so what later sweeps would
still gain is a few times that. ``HOOI_TOL`` was chosen by measurement to cost at most 0.1 % error
on trained and random-init kernels (``benchmarks/decompose_speed.py``). ``stop="error"`` is the
earlier rule (TensorLy's test with a tighter ``tol=1e-5``: the absolute change of the relative
error), kept for comparison.

Why our own code instead of TensorLy's ``partial_tucker``/``tucker``: each step only needs the
leading vectors of small Gram matrices, which torch computes in milliseconds for 512 channels,
where the generic routine takes seconds per 512x512x3x3 kernel.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

HOOI_TOL = 2e-4
EXACT_SWEEPS = 1
POWER_STEPS = 2
SUBSPACE_MIN = 128
STOPS = ("residual", "error")


def _leading_eigvecs(gram: Tensor, rank: int) -> Tensor:
    """The ``rank`` eigenvectors of the symmetric PSD ``gram`` with the largest eigenvalues."""
    _, vecs = torch.linalg.eigh(gram)  # ascending eigenvalues
    return vecs[:, -rank:].flip(-1)


def _leading_left_vectors(y: Tensor, rank: int) -> Tensor:
    """An orthonormal basis of the ``rank`` leading left singular vectors of ``y`` (rows, cols).

    When ``y`` is tall (a HOOI step's ``Y0`` is N x kh*kw*R_in: 512 x 54 for R_in = 6), the
    eigenvectors ``Q`` of the small ``Y^T Y`` give them as ``Y Q / sigma`` (re-orthonormalised by
    QR), instead of an eigendecomposition of the N x N ``Y Y^T``. Falls back to that when the wanted
    singular values come close to 0, where dividing by sigma would lose the orthogonality.
    """
    rows, cols = y.shape
    if rank <= cols < rows:
        vals, q = torch.linalg.eigh(y.T @ y)  # ascending
        vals, q = vals[-rank:].flip(0), q[:, -rank:].flip(-1)
        if float(vals[-1]) > 1e-8 * float(vals[0]) > 0.0:
            return torch.linalg.qr(y @ (q / vals.sqrt())).Q
    return _leading_eigvecs(y @ y.T, rank)


def _unfold(x: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` unfolding: move the axis to the front, flatten the rest."""
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def _mode_dot(x: Tensor, matrix: Tensor, mode: int) -> Tensor:
    """``x x_mode matrix^T``: contract axis ``mode`` of ``x`` with the rows of ``matrix`` (size, R)."""
    return torch.tensordot(x, matrix, dims=([mode], [0])).movedim(-1, mode)


def _check(tensor: Tensor, ranks: Sequence[int]) -> Tensor:
    if tensor.dim() != 3 or len(ranks) != 3:
        raise ValueError(f"HOOI takes a 3-way (N, C, D) tensor and 3 ranks, got shape {tuple(tensor.shape)} "
                         f"and ranks {tuple(ranks)}")
    if not all(1 <= r <= n for r, n in zip(ranks, tensor.shape)):
        raise ValueError(f"Tucker ranks {tuple(ranks)} are outside [1, {tensor.shape[0]}] x [1, {tensor.shape[1]}]"
                         f" x [1, {tensor.shape[2]}]")
    return tensor.detach().to(dtype=torch.float64)


def hosvd(tensor: Tensor, ranks: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    """One-pass truncated HOSVD of a 3-way tensor: ``(core, [U_0, U_1, U_2])`` in float64, each
    ``U_k`` (size_k, R_k) orthonormal (the identity where ``R_k`` is the full size).

    ``||W - W_hat||^2 <= sum_k`` (the discarded sigma^2 of unfolding k) (``docs/math.md``, "HOSVD and HOOI")."""
    x = _check(tensor, ranks)
    factors = [torch.eye(n, dtype=x.dtype, device=x.device) if r == n else
               _leading_eigvecs(_unfold(x, k) @ _unfold(x, k).T, r)
               for k, (r, n) in enumerate(zip(ranks, x.shape))]
    return tucker_core(x, factors), factors


def hooi(tensor: Tensor, ranks: Sequence[int], n_iter_max: int = 100, tol: Optional[float] = None,
         stop: str = "residual", exact_sweeps: Optional[int] = None) -> tuple[Tensor, list[Tensor]]:
    """Tucker of a 3-way tensor by HOOI from the HOSVD start (see the module docstring).

    ``ranks``: one per mode; a mode at full rank keeps the identity and is never updated.
    ``tol``: ``HOOI_TOL`` for ``stop="residual"``, ``1e-5`` for ``stop="error"``.
    ``exact_sweeps``: sweeps whose updates are exact (leading eigenvectors of the Gram matrix);
    in later ones a large mode (``_subspace_pays``) takes ``POWER_STEPS`` steps of subspace
    iteration warm-started from its current factor, and once that stalls, exact sweeps finish
    (None: ``EXACT_SWEEPS`` with ``stop="residual"``, all exact with ``stop="error"``).
    Returns ``(core (R_0, R_1, R_2), [U_0, U_1, U_2])``, float64, on the input's device."""
    if stop not in STOPS:
        raise ValueError(f"HOOI stop must be one of {', '.join(STOPS)}, got {stop!r}")
    tol = (HOOI_TOL if stop == "residual" else 1e-5) if tol is None else tol
    if exact_sweeps is None:
        exact_sweeps = EXACT_SWEEPS if stop == "residual" else n_iter_max
    x = _check(tensor, ranks)
    active = [k for k, (r, n) in enumerate(zip(ranks, x.shape)) if r < n]
    norm2 = float(torch.linalg.vector_norm(x)) ** 2  # no (x * x) temporary
    if norm2 == 0.0 or not active:
        return hosvd(x, ranks)  # exact already: full orthonormal bases
    # HOSVD start for every factorized mode but the first: the first sweep sets that one to its
    # optimum given the others, whose fit is at least the HOSVD's (so HOOI's error <= HOSVD's)
    factors = [torch.eye(n, dtype=x.dtype, device=x.device) if k not in active[1:] else
               _leading_eigvecs(_unfold(x, k) @ _unfold(x, k).T, ranks[k]) for k, n in enumerate(x.shape)]
    # x with each mode last, flattened: multiplying that mode by a factor is then one matmul
    layouts = {k: x.movedim(k, -1).reshape(-1, x.shape[k]) for k in active}
    prev, exact = None, True
    for it in range(n_iter_max):
        exact = it < exact_sweeps or exact_sweeps < 0
        for k in active:
            y = _all_but(x, layouts, factors, active, k)
            if exact or not _subspace_pays(x.shape[k], ranks[k]):
                factors[k] = _leading_left_vectors(_unfold(y, k), ranks[k])
            else:
                factors[k] = _subspace_step(_unfold(y, k), factors[k])
        fit = float((factors[k].T @ _unfold(y, k)).pow(2).sum())  # ||G||^2 after the last update
        residual = max(norm2 - fit, 0.0)
        if stop == "residual":  # at least 3 sweeps, as TensorLy
            done = it >= 2 and prev - residual <= tol * residual
            prev = residual
        else:  # the absolute change of the relative error, at least 3 sweeps (TensorLy's test)
            err = (residual / norm2) ** 0.5
            done = it >= 2 and abs(prev - err) < tol
            prev = err
        if done and not exact:
            exact_sweeps = -1  # subspace steps may stall short of the optimum: end on an exact sweep
        elif done:
            break
    return tucker_core(x, factors), factors


def _subspace_pays(size: int, rank: int) -> bool:
    """Subspace steps replace the exact update only where the ``size x size`` eigendecomposition
    dominates a sweep (``size > SUBSPACE_MIN``) and the rank is small beside it (``4 R <= size``):
    below that the exact update is cheap and converges in fewer sweeps."""
    return size > SUBSPACE_MIN and 4 * rank <= size


def _subspace_step(y: Tensor, u: Tensor) -> Tensor:
    """``POWER_STEPS`` steps of subspace iteration for the leading left singular vectors of ``y``
    from ``u``: ``u <- orth(Y Y^T u)``. Never lowers ``||u^T Y||^2`` (the fit), and costs
    ``O(rows cols R)`` instead of the ``O(rows^3)`` eigendecomposition."""
    for _ in range(POWER_STEPS):
        u = torch.linalg.qr(y @ (y.T @ u)).Q
    return u


def _all_but(x: Tensor, layouts: dict[int, Tensor], factors: list[Tensor], active: list[int], skip: int) -> Tensor:
    """``x`` multiplied by ``U_k^T`` on every factorized mode k except ``skip``: (.., R_k, ..)."""
    others = [k for k in active if k != skip]
    if not others:
        return x
    first = others[0]
    shape = [n for k, n in enumerate(x.shape) if k != first]
    y = (layouts[first] @ factors[first]).reshape(*shape, -1).movedim(-1, first)  # one matmul
    for k in others[1:]:
        y = _mode_dot(y, factors[k], k)
    return y


def tucker_core(x: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """``G = W x_0 U_0^T x_1 U_1^T x_2 U_2^T``. A square factor is the identity here (``hosvd``
    and ``hooi`` keep full-rank modes as the identity) and is skipped."""
    for k, u in enumerate(factors):
        if u.shape[0] != u.shape[1]:
            x = _mode_dot(x, u, k)
    return x


def tucker2(weight: Tensor, ranks: tuple[int, int], n_iter_max: int = 100, tol: Optional[float] = None,
            stop: str = "residual", exact_sweeps: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Tucker-2 of a conv kernel (N, C, *k) (any number of spatial axes) on its channel modes by
    HOOI on the 3-way (N, C, prod k) view: ``(core, U, V)``, core (R_out, R_in, *k), ``U`` (N, R_out),
    ``V`` (C, R_in), float64. ``ranks = (R_out, R_in)``."""
    w = _check_kernel(weight, "Tucker-2")
    n, c, *k = w.shape
    core, (u, v, _) = hooi(w.reshape(n, c, -1), (*_pair(ranks, n, c), math.prod(k)), n_iter_max, tol, stop,
                           exact_sweeps)
    return core.reshape(*core.shape[:2], *k), u, v


def hosvd2(weight: Tensor, ranks: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """One-pass truncated HOSVD on modes 0 and 1 of a conv kernel (N, C, *k): ``(core, U, V)`` in float64."""
    w = _check_kernel(weight, "Tucker-2")
    n, c, *k = w.shape
    core, (u, v, _) = hosvd(w.reshape(n, c, -1), (*_pair(ranks, n, c), math.prod(k)))
    return core.reshape(*core.shape[:2], *k), u, v


def _check_kernel(weight: Tensor, what: str) -> Tensor:
    if weight.dim() < 3:
        raise ValueError(f"{what} needs a conv kernel (N, C, *k), got shape {tuple(weight.shape)}")
    return weight


def _pair(ranks: Sequence[int], n: int, c: int) -> tuple[int, int]:
    r_out, r_in = ranks
    if not (1 <= r_out <= n and 1 <= r_in <= c):
        raise ValueError(f"Tucker-2 ranks (out={r_out}, in={r_in}) are outside [1, {n}] x [1, {c}]")
    return r_out, r_in


def tucker2_to_tensor(core: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Rebuild ``W = G x_0 U x_1 V``: (R_out, R_in, *k) -> (N, C, *k).

    Works for any factors (also non-orthogonal ones after training)."""
    return torch.einsum("ab...,na,cb->nc...", core, u, v)


def tucker3(tensor: Tensor, ranks: tuple[int, int, int], n_iter_max: int = 100, tol: Optional[float] = None,
            stop: str = "residual") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Tucker-3 of a conv kernel as the 3-way (N, C, kh kw) tensor (Gobieski et al.) by HOOI:
    ``(G, W_N, W_C, W_D)``, G (N', C', D'), float64. ``ranks = (N', C', D')``."""
    if tensor.dim() != 3:
        raise ValueError(f"Tucker-3 takes the kernel as a 3-way (N, C, kh kw) tensor, got shape {tuple(tensor.shape)}")
    core, (w_n, w_c, w_d) = hooi(tensor, ranks, n_iter_max, tol, stop)
    return core, w_n, w_c, w_d


def tucker3_to_tensor(core: Tensor, w_n: Tensor, w_c: Tensor, w_d: Tensor) -> Tensor:
    """Rebuild ``W = G x_0 W_N x_1 W_C x_2 W_D``: (N', C', D') -> (N, C, D); any factors."""
    return torch.einsum("abr,na,cb,dr->ncd", core, w_n, w_c, w_d)
