"""Tensor-train (TT) decomposition: TT-SVD (Oseledets 2011) and TT-matrices (Novikov et al. 2015).

``docs/math.md``, "TT-SVD" and "TT-matrix layers". A TT of a tensor ``A`` of shape ``(n_1..n_d)`` is a list of cores
``G_k`` of shape ``(r_{k-1}, n_k, r_k)``, ``r_0 = r_d = 1``, with
``A[i_1, ..., i_d] = G_1[:, i_1, :] @ G_2[:, i_2, :] @ ... @ G_d[:, i_d, :]``.
A TT-matrix of ``W`` (M x N, ``M = prod m_k``, ``N = prod n_k``) has 4-way cores
``(r_{k-1}, m_k, n_k, r_k)``: the TT of ``W`` reshaped to ``(m_1..m_d, n_1..n_d)`` with the row and
column indices interleaved to ``(m_1 n_1, ..., m_d n_d)``.

Our own torch code rather than TensorLy's ``tensor_train``, which takes fixed ranks only: TT-SVD
here also truncates to a relative error ``eps`` (with Oseledets' guarantee) or by a rank rule
applied to each sequential unfolding. Everything is float64 on the input's device.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from factorch.decompositions.blocks import squared_norm
from factorch.decompositions.svd import tolerance_rank, truncated_svd
from factorch.decompositions.svd_cost import svd_seconds

RankArg = Union[int, Sequence[int], None]


def max_tt_ranks(shape: Sequence[int]) -> tuple[int, ...]:
    """Full TT-ranks of a generic tensor of ``shape``: ``r_k = min(n_1...n_k, n_{k+1}...n_d)``."""
    shape = [int(n) for n in shape]
    return tuple(min(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, len(shape)))


def tt_params(shape: Sequence[int], ranks: Sequence[int]) -> int:
    """Entries of the cores: ``sum_k r_{k-1} n_k r_k`` (Oseledets 2011; Novikov et al. 2015)."""
    full = (1, *ranks, 1)
    return sum(full[k] * n * full[k + 1] for k, n in enumerate(shape))


def tt_svd_seconds(shape: Sequence[int], ranks: Sequence[int]) -> float:
    """Expected one-thread seconds of ``tt_svd(A, ranks)`` for ``A`` of ``shape``: the sum of its
    steps' ``truncated_svd`` costs (``svd_seconds``), step k on the ``(r_{k-1} n_k) x rest``
    unfolding at rank ``r_k`` (capped at the unfolding's size)."""
    shape, full = [int(n) for n in shape], (1, *ranks)
    total = 0.0
    for k in range(len(shape) - 1):
        rows, cols = full[k] * shape[k], math.prod(shape[k + 1:])
        total += svd_seconds((rows, cols), max(1, min(full[k + 1], rows, cols)))[0]
    return total


def tt_svd(tensor: Tensor, rank: RankArg = None, *, eps: Optional[float] = None,
           rule: Optional[Callable[[Tensor], int]] = None) -> list[Tensor]:
    """TT-SVD of ``tensor``: float64 cores ``(r_{k-1}, n_k, r_k)``, built left to right.

    Give exactly one of

    * ``rank``: resolved ranks, one int per bond (or one int for every bond), each in ``[1, r_k]``
      with ``r_k`` the bond's full rank (``max_tt_ranks``); others are a ``ValueError``. Rank specs
      (an int as a ceiling, fractions, rules) are resolved before, by ``factorch.rank.resolve``:
      this module applies ranks, it does not choose them. A rank above what the unfolding
      supports (its neighbours were truncated, so it has fewer than ``r_k`` singular values) is
      padded with zero columns, so the cores always have the requested shapes. Each step is a
      ``truncated_svd`` (randomized where the rank is small: within its ``tol`` of the best
      rank-r_k step, so ``||A - A_hat|| <= (1 + tol) sqrt(d - 1) best``);
    * ``eps``: Oseledets' rule: each step keeps the smallest ``r_k`` whose discarded tail
      ``(sum_{i > r_k} sigma_i^2)^(1/2) <= delta = eps ||A|| / sqrt(d - 1)``; then
      ``||A - A_hat|| <= eps ||A||``;
    * ``rule``: ``r_k = rule(Z_k)`` of the k-th unfolding ``Z_k`` (``(r_{k-1} n_k) x rest``), at least 1.

    Memory (``docs/math.md``, "Cost of computing a decomposition"): with fixed ranks a float32
    ``tensor`` is read as it is (``truncated_svd`` converts row blocks to float64), so the extra
    memory is the first step's ``(rest, r_1)`` factors, a fraction of the tensor; the ``eps`` and
    ``rule`` paths take a float64 copy and LAPACK's full SVD of each unfolding (about 4x the
    float64 tensor at the first step).
    """
    if sum(v is not None for v in (rank, eps, rule)) != 1:
        raise ValueError("tt_svd takes exactly one of rank, eps or rule")
    x = tensor.detach()
    x = x if x.is_floating_point() else x.to(dtype=torch.float64)
    shape, d = tuple(x.shape), x.dim()
    if d == 0 or min(shape, default=0) < 1:
        raise ValueError(f"tt_svd needs a tensor with at least one axis and no empty axes, got shape {shape}")
    full = max_tt_ranks(shape)
    ranks = _checked_ranks(rank, full) if rank is not None else None
    if eps is not None and (isinstance(eps, bool) or not 0.0 <= float(eps) < 1.0):
        raise ValueError(f"TT-SVD tolerance eps must be in [0, 1), got {eps!r}")
    delta = float(eps) * squared_norm(x) ** 0.5 / math.sqrt(d - 1) if eps is not None and d > 1 else 0.0
    if ranks is None or d == 1:
        x = x.to(dtype=torch.float64)  # the eps and rule paths' full SVDs work on a float64 copy
    cores, z, r_prev = [], x, 1
    for k in range(d - 1):
        z = z.reshape(r_prev * shape[k], -1)  # (r_{k-1} n_k, n_{k+1} ... n_d)
        if ranks is not None:  # a fixed rank needs no spectrum: the cheapest truncated SVD
            r = ranks[k]
            keep = min(r, min(z.shape))
            u, s, vh = truncated_svd(z, keep)
        else:
            u, s, vh = torch.linalg.svd(z, full_matrices=False)
            r = max(tolerance_rank(s, delta), 1) if eps is not None else max(int(rule(z)), 1)
            keep = min(r, s.shape[0])
        u, v = u[:, :keep], vh[:keep].mul_(s[:keep, None])  # (r_{k-1} n_k, keep), (keep, rest): S V^T in place
        if keep < r:  # requested rank above this unfolding's rank: zero-pad (exact, shapes as asked)
            u = torch.cat([u, u.new_zeros(u.shape[0], r - keep)], dim=1)
            v = torch.cat([v, v.new_zeros(r - keep, v.shape[1])], dim=0)
        cores.append(u.reshape(r_prev, shape[k], r))
        z, r_prev = v, r
    cores.append(z.reshape(r_prev, shape[-1], 1))
    return cores


def _checked_ranks(rank: Union[int, Sequence[int]], full: tuple[int, ...]) -> tuple[int, ...]:
    """``rank`` as one int per bond, each in ``[1, full_k]`` (an int: the same at every bond), or one
    ``ValueError``: resolved ranks are applied as given, never capped here."""
    ints = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    ranks = (rank,) * len(full) if ints(rank) else tuple(rank) if isinstance(rank, (tuple, list)) else ()
    if len(ranks) != len(full) or not all(ints(r) for r in ranks):
        raise ValueError(f"TT ranks must be {len(full)} ints (one per bond) or one int, got {rank!r}")
    for k, (r, f) in enumerate(zip(ranks, full)):
        if not 1 <= r <= f:
            raise ValueError(f"TT rank {r} of bond {k + 1} must be in [1, {f}] (ranks must be >= 1 and at most the "
                             f"bond's full rank); full ranks {full}")
    return ranks


def tt_to_tensor(cores: Sequence[Tensor]) -> Tensor:
    """Rebuild the full tensor ``(n_1, ..., n_d)`` from cores ``(r_{k-1}, n_k, r_k)``."""
    shape = [c.shape[1] for c in cores]
    full = cores[0].reshape(-1, cores[0].shape[-1])  # (n_1, r_1)
    for core in cores[1:]:
        full = (full @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])  # (n_1..n_k, r_k)
    return full.reshape(shape)


def interleave(matrix: Tensor, out_shape: Sequence[int], in_shape: Sequence[int]) -> Tensor:
    """``W`` (M, N) -> the tensor ``(m_1 n_1, ..., m_d n_d)`` whose TT is W's TT-matrix."""
    d = len(out_shape)
    if len(in_shape) != d:
        raise ValueError(f"a TT-matrix needs as many row factors as column factors, got {tuple(out_shape)} "
                         f"and {tuple(in_shape)}")
    if tuple(matrix.shape) != (math.prod(out_shape), math.prod(in_shape)):
        raise ValueError(f"matrix of shape {tuple(matrix.shape)} does not factor as "
                         f"{tuple(out_shape)} x {tuple(in_shape)}")
    t = matrix.reshape(*out_shape, *in_shape)  # (m_1..m_d, n_1..n_d)
    perm = [i for k in range(d) for i in (k, d + k)]  # (m_1, n_1, m_2, n_2, ...)
    return t.permute(perm).reshape([m * n for m, n in zip(out_shape, in_shape)])


def tt_matrix_svd(matrix: Tensor, out_shape: Sequence[int], in_shape: Sequence[int], rank: RankArg = None,
                  *, eps: Optional[float] = None, rule: Optional[Callable[[Tensor], int]] = None) -> list[Tensor]:
    """TT-matrix of ``matrix`` (M x N): cores ``(r_{k-1}, m_k, n_k, r_k)`` by TT-SVD of the interleaved
    tensor (Novikov et al. 2015; without the interleave the result is an order-2d TT, not a TT-matrix).
    The interleave is a permutation, so the ``eps`` guarantee holds for the matrix."""
    cores = tt_svd(interleave(matrix.detach(), out_shape, in_shape), rank, eps=eps, rule=rule)
    return [c.reshape(c.shape[0], m, n, c.shape[-1]) for c, m, n in zip(cores, out_shape, in_shape)]


def tt_matrix_to_matrix(cores: Sequence[Tensor]) -> Tensor:
    """Rebuild ``W`` (M, N) from TT-matrix cores ``(r_{k-1}, m_k, n_k, r_k)``; differentiable.

    Without autograd (no core requires grad: a report's error column, ``to_dense``) each step
    writes its ``m_k`` row blocks into place, so besides ``W`` only ``1 / m_k`` of it is
    temporary; the einsum's interleaving reshape copies all of it (twice ``W`` at the last step)."""
    full = cores[0].new_ones(1, 1, 1)  # (M_k, N_k, r_k): rows m_1..m_k, columns n_1..n_k
    for core in cores:
        r0, m, n, r1 = core.shape
        a, b = full.shape[:2]
        if full.requires_grad or core.requires_grad:
            full = torch.einsum("abr,rmns->ambns", full, core).reshape(a * m, b * n, r1)
            continue
        out, flat = full.new_empty(a, m, b, n * r1), full.reshape(a * b, r0)
        for i in range(m):
            out[:, i] = (flat @ core[:, i].reshape(r0, n * r1)).reshape(a, b, n * r1)
        full = out.reshape(a * m, b * n, r1)
    return full[..., 0]


def balanced_factors(n: int, d: int) -> tuple[int, ...]:
    """``n`` as ``d`` factors, as equal as possible, largest first: prime factors, largest first, each
    into the currently smallest factor (tltorch's ``get_tensorized_shape`` works the same way)."""
    if n < 1 or d < 1:
        raise ValueError(f"cannot factor {n} into {d} factors")
    primes, rest, p = [], n, 2
    while p * p <= rest:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    if rest > 1:
        primes.append(rest)
    bins = [1] * d
    for q in sorted(primes, reverse=True):
        bins[bins.index(min(bins))] *= q
    return tuple(sorted(bins, reverse=True))


def tensorize(n: int, d: int, pad: bool = True, slack: float = 1.25) -> tuple[int, ...]:
    """``d`` balanced factors of ``n`` or, with ``pad``, of the smallest ``n' >= n`` that factors well.

    "Well": the factors' sum (what TT parameters grow with) is within ``slack`` of the ideal
    ``d n'^(1/d)``. A prime ``n`` (e.g. 1009 -> 1009 x 1 x 1) thus becomes 1014 = 13 x 13 x 6; a
    power of two always qualifies, so the search ends before ``2 n``.
    """
    if not pad or d == 1:
        return balanced_factors(n, d)
    for size in range(n, 2 * n + 1):
        factors = balanced_factors(size, d)
        if sum(factors) <= slack * d * size ** (1.0 / d):
            return factors
    return balanced_factors(n, d)  # unreachable: powers of two qualify
