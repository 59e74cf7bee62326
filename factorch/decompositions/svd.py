"""Singular values and truncated SVDs, each by the cheapest accurate route (``docs/math.md``, "Truncated SVD").

Everything is float64 on the input's device. For an (m, n) matrix ``W``, ``n <= m`` after
transposing, ``truncated_svd`` picks by a cost model (``svd_method``) among

* ``full``: LAPACK's SVD, ~``4 m n^2 + 8 n^3`` flops at low efficiency. Exact; wins only on small
  matrices;
* ``gram``: the eigenvectors ``V_R`` of the small side's Gram ``W^T W`` (one GEMM and an ``n x n``
  symmetric eigenproblem), then an exact SVD of ``W V_R``. The result is the projection
  ``W V_R V_R^T``; its squared error is the optimal one to ``~n u sigma_1^2`` (u = 2^-53);
* ``randomized``: subspace iteration from a Gaussian sketch with ``p = min(R / 2, n / 16)``
  oversampling (Halko, Martinsson & Tropp 2011, algorithms 4.4 and 5.1), float32 GEMMs while the error stays
  large enough (10 % of ``||W||``) for float32 rounding not to matter, float64 below. Costs
  ``~(2q + 2) m n (R + p)`` GEMM multiply-adds for q power iterations instead of an ``n^3``
  factorization; used when R is small against n.

Error of ``randomized`` (what it targets, and how): the captured energy
``c_q = sum_{i <= R} theta_i^2`` (Ritz values of the sketch) grows monotonically to the optimum
``sum_{i <= R} sigma_i^2`` as q grows; the iteration stops (after at least 3) when the remaining
gain, extrapolated as a geometric series with the larger of the last two gain ratios, would lower
the error by less than ``tol / 2`` (``tol`` = 1 % by default). So the result's error ``e`` targets
``e <= (1 + tol) e_opt``: an a-posteriori estimate, not a proof (a proof needs the spectrum's
tail, i.e. the factorization this avoids). After ``max_iter`` (8) iterations an estimate up to
``tol`` is accepted; beyond that the ``gram`` route runs instead. Tests check the bound against
the exact SVD on flat, power-law, exponential and low-rank-plus-noise spectra, at ``tol`` 1 % and
0.1 %; ``benchmarks/svd_speed.py`` on an 8192 x 8192 layer.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from factorch.decompositions.blocks import gram64, mm64, tmm64, squared_norm
from factorch.decompositions.svd_cost import sketch_width, svd_method

SVD_METHODS = ("auto", "full", "gram", "randomized")


def _matrix(matrix: Tensor) -> Tensor:
    """``matrix`` detached, in its own floating dtype (no copy): the routes read it in float64 by row
    blocks (``mm64``, ``tmm64``, ``gram64``) instead of holding a float64 copy of it."""
    if matrix.dim() != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(matrix.shape)}")
    m = matrix.detach()
    return m if m.is_floating_point() else m.to(dtype=torch.float64)


# ---- singular values -------------------------------------------------------------------------
def singular_values(matrix: Tensor) -> Tensor:
    """All ``min(m, n)`` singular values of ``matrix``: float64, descending, on its device.

    ``sigma_i^2`` are the eigenvalues of the small side's Gram matrix (float64): one GEMM and a
    symmetric eigenvalue problem without vectors, 3-8x faster than ``torch.linalg.svdvals`` on
    one CPU thread (2048 x 2048: 1.5 s against 5.7 s). Accuracy: a backward-stable eigensolver on
    the Gram gives ``|s_i^2 - sigma_i^2| <= c n u sigma_1^2`` -- exact for what the rank rules
    read (sums of sigma^2: energies, tails, EVBMF's noise level), but a singular value below
    ``~sqrt(n u) sigma_1`` (1e-6 sigma_1) loses its relative accuracy. Matrices with a small
    side of at most 32, where the Gram saves nothing, go to ``svdvals``; so does a spectrum that
    reaches the Gram's round-off floor (an eigenvalue below ``1e-10`` of the largest: an exactly
    low-rank matrix, whose small singular values the Gram cannot resolve).
    """
    m = _matrix(matrix)
    if min(m.shape, default=0) == 0:
        return m.new_zeros(0, dtype=torch.float64)
    if min(m.shape) <= 32:
        return torch.linalg.svdvals(m.to(torch.float64))
    gram = gram64(m.T if m.shape[0] <= m.shape[1] else m)  # (n, n), n the small side
    eig = torch.linalg.eigvalsh(gram).flip(0)  # descending
    del gram
    if float(eig[-1]) <= 1e-10 * float(eig[0]):
        return torch.linalg.svdvals(m.to(torch.float64))
    return eig.sqrt()


# ---- building blocks -------------------------------------------------------------------------
def _orthonormalize(y: Tensor, exact: bool, gram: Optional[Tensor] = None) -> Tensor:
    """An orthonormal basis of ``y``'s columns (m, k), m >= k.

    Cholesky-QR: ``Q = Y L^-T`` with ``L L^T = Y^T Y``: one Gram GEMM and one triangular solve,
    several times faster than Householder QR for tall ``Y``. ``exact``: twice in float64
    (CholeskyQR2: orthonormal to machine precision while cond(Y) < 1e7), Householder QR where
    Cholesky fails. Otherwise once (reusing ``gram = Y^T Y`` if given), in ``y``'s dtype, with a
    small diagonal shift so it never fails (``1e-5`` of the trace in float32, ``1e-12`` in float64,
    above the Gram's rounding): the intermediate bases of subspace iteration need to be well
    conditioned, not exact.
    """
    if not exact:
        gram = (y.T @ y).double() if gram is None else gram  # (k, k), rounded at y's precision
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        shift = (1e-5 if y.dtype == torch.float32 else 1e-12) * float(gram.diagonal().sum()) + 1e-300
        for _ in range(4):  # the shift covers the Gram's rounding; grow it if that was not enough
            low, info = torch.linalg.cholesky_ex(gram + shift * eye)
            if int(info) == 0:
                return torch.linalg.solve_triangular(low.to(y.dtype), y.T, upper=False).T
            shift *= 1e3
        return torch.linalg.qr(y).Q
    q = y.double()
    for _ in range(2):
        low, info = torch.linalg.cholesky_ex(q.T @ q)
        if int(info) != 0:
            return torch.linalg.qr(y.double()).Q
        q = torch.linalg.solve_triangular(low, q.T, upper=False).T
    return q


def _low_rank_svd(x: Tensor, basis: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Best rank-``rank`` SVD of ``X B^T`` for ``x`` (M, k) and ``basis`` B (N, k) with orthonormal
    columns: ``X = Q_x R_x``, ``R_x = U_r S V_r^T`` (k x k), so ``X B^T = (Q_x U_r) S (B V_r)^T``."""
    q = _orthonormalize(x, exact=True)  # (M, k)
    u, s, vh = torch.linalg.svd(q.T @ x, full_matrices=False)  # (k, k)
    del x
    return q @ u[:, :rank], s[:rank], vh[:rank] @ basis.T


def _full(w: Tensor, rank: int, tol: float) -> tuple[Tensor, Tensor, Tensor]:
    u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
    return u[:, :rank].clone(), s[:rank], vh[:rank].clone()  # not views holding the (m, n) and (n, n) factors


def _gram(w: Tensor, rank: int, tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """``w`` is (m, n), n <= m: the top eigenvectors ``V_R`` of ``W^T W`` (n, n) span the right
    singular space; the result is the exact SVD of ``W V_R V_R^T``."""
    basis = torch.linalg.eigh(gram64(w)).eigenvectors[:, -rank:].flip(-1)  # (n, R); the (n, n) ones freed
    return _low_rank_svd(mm64(w, basis), basis, rank)


def _randomized(w: Tensor, rank: int, tol: float, max_iter: int = 8,
                seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Subspace iteration (HMT 2011 alg. 4.4) on ``w`` (m, n), n <= m, until ``_excess`` estimates
    at most ``tol / 2`` (at ``max_iter``: ``tol``); ``_gram`` when even that is not met.

    Products with ``w`` run in float32 (on ``w`` itself when it is float32, else on a float32 copy)
    until the error is below 10 % of ``||W||``, then in float64 by row blocks (``mm64``): no
    float64 copy of ``w`` is ever held. Besides that float32 copy, at most about four ``(m, l)``
    float32 blocks (the basis, ``W^T Q`` and a product being orthonormalized) are alive at once."""
    m, n = w.shape
    width = sketch_width(n, rank)
    total = squared_norm(w)
    gen = torch.Generator(device=w.device).manual_seed(seed)
    work: Optional[Tensor] = w if w.dtype == torch.float32 else w.float()  # None: float64 products
    q = _orthonormalize(work @ torch.randn(n, width, generator=gen, device=w.device, dtype=work.dtype), False)
    captured: list[float] = []
    for it in range(max_iter + 1):
        z = work.T @ q if work is not None else tmm64(w, q)  # (n, l) = (Q^T W)^T: its singular values are the Ritz values
        gram = (z.T @ z).double()  # (l, l)
        theta2 = torch.linalg.eigvalsh(gram).flip(0)  # (l,), descending
        captured.append(float(theta2[:rank].sum()))
        err2 = max(total - captured[-1], 0.0)
        if work is not None and err2 < 1e-2 * total:
            # error below 10 % of ||W||: float32 rounding (~1e-6 ||W||^2 in the energies) would
            # blur the gains the stopping rule reads; go on in float64 from this basis
            work, captured, z = None, [], z.double()  # the float32 Gram is still fine for one step
        else:
            excess = _excess(captured, err2)
            if excess <= tol / 2 or (it == max_iter and excess <= tol):
                precise, work = work is None, None
                return _finish(w, q, z, gram if precise else None, rank)
        if it == max_iter:
            break
        del q
        basis = _orthonormalize(z, False, gram)  # (n, l)
        del z
        y = work @ basis if work is not None else mm64(w, basis)  # (m, l)
        del basis
        q = _orthonormalize(y, False)
        del y
    work = None
    return _gram(w, rank, tol)


def _finish(w: Tensor, q: Tensor, z: Tensor, zz: Optional[Tensor], rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Best rank-R SVD of ``P W``, ``P`` the projector on ``span(q)``, from ``z = W^T q`` (and
    ``zz = z^T z`` if already in float64); ``q`` and ``z`` in float32 or float64.

    With ``q^T q = L L^T`` (float64), ``Q = q L^-T`` is orthonormal and ``B = Q^T W = L^-1 z^T``;
    the eigenvectors ``U_b`` of ``B B^T = L^-1 (z^T z) L^-T`` (l x l) give ``U = Q U_b`` and
    ``V^T = U_b^T B / S``: no further pass over W. ``U`` is orthonormal; the rows of ``V^T`` to
    ``~u sigma_1^2 / sigma_R^2``; ``U S V^T = Q U_b U_b^T Q^T W`` exactly. The float64 products
    with ``q`` and ``z`` go by row blocks, so only the results ``U`` (m, R) and ``V S`` (n, R) are
    new float64 memory. Where ``q`` is too ill-conditioned for this (W of rank below the sketch
    width), one more pass: an exactly orthonormal basis and an SVD of ``W^T Q``.
    """
    low, info = torch.linalg.cholesky_ex(gram64(q))  # (l, l)
    diag = low.diagonal()
    if int(info) == 0 and float(diag.min()) > 1e-3 * float(diag.max()):  # Q orthonormal to ~u cond^2
        half = torch.linalg.solve_triangular(low, gram64(z) if zz is None else zz, upper=False)  # L^-1 z^T z
        bbt = torch.linalg.solve_triangular(low, half.T, upper=False)  # B B^T (l, l)
        del half, zz
        ub = torch.linalg.eigh(bbt).eigenvectors[:, -rank:].flip(-1)  # (l, R)
        del bbt
        coef = torch.linalg.solve_triangular(low.T, ub, upper=True)  # L^-T U_b (l, R)
        del ub, low, diag
        u = mm64(q, coef)  # (m, R) = Q U_b
        del q
        sv = mm64(z, coef)  # (n, R) = (U_b^T B)^T = V S
        s = sv.norm(dim=0)
        return u, s, sv.div_(s.clamp_min(1e-300)).T
    basis = _orthonormalize(q.double(), exact=True)  # (m, l)
    del q
    v, s, uh = _low_rank_svd(tmm64(w, basis), basis, rank)  # SVD of (P W)^T
    return uh.T, s, v.T


def _excess(captured: list[float], err2: float) -> float:
    """Estimated ``e / e_opt - 1`` from the captured energies ``c_0..c_k`` of the iterations.

    The gains ``g_j = c_j - c_{j-1}`` of subspace iteration shrink about geometrically; the rest
    of the series, ``g_k rho / (1 - rho)`` with ``rho`` the larger of the last two ratios (the
    first gains, which take the dominant directions, shrink much faster than the later ones),
    is what ``e^2`` can still lose. Infinite while there are fewer than three gains.
    """
    if len(captured) < 4:
        return math.inf
    g0, g1, g2 = (captured[-3] - captured[-4], captured[-2] - captured[-3], captured[-1] - captured[-2])
    if g2 <= 0.0:
        return 0.0  # nothing gained any more
    rho = max(g1 / g0 if g0 > 0.0 else 1.0, g2 / g1 if g1 > 0.0 else 1.0)
    remaining = g2 * rho / (1.0 - rho) if rho < 1.0 else math.inf
    return math.sqrt(err2 / (err2 - remaining)) - 1.0 if remaining < err2 else math.inf


_ROUTES = {"full": _full, "gram": _gram, "randomized": _randomized}


# ---- public ----------------------------------------------------------------------------------
def truncated_svd(matrix: Tensor, rank: int, method: str = "auto",
                  tol: float = 1e-2) -> tuple[Tensor, Tensor, Tensor]:
    """Rank-``rank`` SVD ``(U (m, R), S (R,), Vh (R, n))`` of ``matrix``, float64 on its device.

    ``method``: ``auto`` (``svd_method``), ``full``, ``gram`` or ``randomized``; see the module
    docstring for each route's error. ``tol``: the randomized route's target relative excess
    error over the optimal rank-R error.
    """
    if method not in SVD_METHODS:
        raise ValueError(f"SVD method must be one of {', '.join(SVD_METHODS)}, got {method!r}")
    w = _matrix(matrix)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(w.shape):
        raise ValueError(f"SVD rank {rank!r} is outside [1, {min(w.shape)}] for a {tuple(w.shape)} matrix")
    if not 0.0 < tol < 1.0:
        raise ValueError(f"SVD tolerance must be in (0, 1), got {tol!r}")
    route = svd_method(tuple(w.shape), rank) if method == "auto" else method
    if w.shape[0] >= w.shape[1]:
        return _ROUTES[route](w, rank, tol)
    u, s, vh = _ROUTES[route](w.T, rank, tol)  # W^T = U S Vh  =>  W = Vh^T S U^T
    return vh.T, s, u.T


def balanced_svd(matrix: Tensor, rank: int, method: str = "auto") -> tuple[Tensor, Tensor]:
    """Best rank-``rank`` factors ``(A, B)`` with ``matrix ~= A @ B`` (Eckart-Young).

    ``matrix`` is (N, C); returns ``A = U_R sqrt(S_R)`` (N, R) and ``B = sqrt(S_R) V_R^T`` (R, C) in
    float64 on its device, by ``truncated_svd(matrix, rank, method)``. Splitting sqrt(Sigma) to
    both sides keeps the two factors equally scaled, which conditions fine-tuning better than
    putting Sigma on one side.
    """
    u, s, vh = truncated_svd(matrix, rank, method)
    root = s.sqrt()
    return u.mul_(root), vh.mul_(root[:, None])  # in place: the factors are the only (N, R), (R, C) copies


def energy_rank(singular_values: Tensor, threshold: float) -> int:
    """Smallest R with ``sum_{i<=R} sigma_i^2 >= threshold * sum_i sigma_i^2`` (energy on sigma^2).

    ``singular_values`` must be sorted in decreasing order. A zero matrix has rank 0.
    """
    energy = singular_values.to(torch.float64) ** 2
    total = float(energy.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(energy, 0) / total
    # tolerate round-off: threshold 1.0 must give the numerical rank, not len + 1
    return min(int((cumulative < threshold - 1e-12).sum()) + 1, len(singular_values))


def tolerance_rank(singular_values: Tensor, delta: float) -> int:
    """Smallest R whose discarded tail ``(sum_{i > R} sigma_i^2)^(1/2) <= delta`` (absolute).

    ``singular_values`` must be sorted in decreasing order. The tail is summed from the smallest
    value up (reversed cumulative sum), which keeps it accurate when it is tiny.
    """
    energy = singular_values.to(torch.float64) ** 2
    tails = torch.flip(torch.cumsum(torch.flip(energy, [0]), 0), [0])  # tails[R] = sum_{i >= R} sigma_i^2
    return int((tails > float(delta) ** 2).sum())
