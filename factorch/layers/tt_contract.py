"""``y = W x`` for a TT-matrix ``W`` without building it: contraction chains and plans (Novikov et al. 2015).

``W`` (M' x N') has cores ``G_k`` (r_{k-1}, m_k, n_k, r_k). The chain absorbs one core at a time,
right to left (``rtl``, core d first) or left to right (``ltr``, core 1 first), and keeps the pair
it contracts next adjacent in memory, so every step is one matrix product and the state is never
permuted:

* ``rtl``: state ``(B n_1..n_{k-1}, n_k r_k, A)``, ``A = m_{k+1}..m_d`` the output modes made so
  far; core k viewed as the ``(r_{k-1} m_k, n_k r_k)`` matrix ``C``. ``C @ state``, broadcast over
  the leading axis, is ``(B n_1..n_{k-1}, r_{k-1} m_k, A)``: the next step's state as it lies.
  After core 1 the state is ``(B, m_1..m_d)``, i.e. ``y``;
* ``ltr``: the mirror: state ``(B m_1..m_{k-1}, r_{k-1} n_k, N)``, ``N = n_{k+1}..n_d`` the input
  modes not yet absorbed; core k as the ``(m_k r_k, r_{k-1} n_k)`` matrix (a copy of the small core).

A step whose free extent (A, or N) is 1 is one GEMM over all rows. Otherwise the broadcast
product runs one small GEMM per leading index: with many tiny matrices (25088 x 4096 at rank 4:
392 products of 16 x 32 by 32 x 4 in the second step) their per-matrix overhead and short vectors
dominate. A *plan* therefore may first merge neighbouring cores into one super-core
``(r_{k-1}, m_k..m_l, n_k..n_l, r_l)`` -- the same TT-matrix with fewer, larger modes -- trading
more multiply-adds for fewer and larger products. ``plan_groups`` picks the merge per batch size
by a time model (``_step_seconds``); the layer's ``count_macs`` reports the plan's multiply-adds.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import List, Sequence

import torch
from torch import Tensor

# Time model, seconds, fitted on one thread of the project's CPU (float32, MKL): a fixed cost per
# product call, a cost per matrix of a broadcast product, and multiply-adds at a rate that holds
# for products whose narrowest dimension fills a 16-float vector. Only its ranking of plans matters.
_CALL, _PER_MATRIX, _PER_MAC, _VECTOR = 4e-6, 8e-8, 2.5e-11, 16


def merge(cores: Sequence[Tensor]) -> Tensor:
    """Consecutive cores as one super-core ``(r_{k-1}, m_k..m_l, n_k..n_l, r_l)`` (row-major modes)."""
    out = cores[0]
    for core in cores[1:]:
        r0, m1, n1, r1 = out.shape
        _, m2, n2, r2 = core.shape
        pair = (out.reshape(-1, r1) @ core.reshape(r1, -1)).reshape(r0, m1, n1, m2, n2, r2)
        out = pair.permute(0, 1, 3, 2, 4, 5).reshape(r0, m1 * m2, n1 * n2, r2)
    return out


def group(cores: Sequence[Tensor], sizes: Sequence[int]) -> List[Tensor]:
    """The super-cores of ``cores`` merged in consecutive runs of ``sizes`` (which sum to d)."""
    out, start = [], 0
    for size in sizes:
        out.append(cores[start] if size == 1 else merge(cores[start:start + size]))
        start += size
    return out


def contract_rtl(x: Tensor, cores: Sequence[Tensor]) -> Tensor:
    """``x`` (B, N') -> ``W x`` (B, M'), core d first (Novikov et al.'s order)."""
    b, a = x.shape[0], 1
    t = x
    for core in reversed(cores):
        r0, m, n, r1 = core.shape
        mat = core.reshape(r0 * m, n * r1)  # a view: rows (r_{k-1}, m_k), columns (n_k, r_k)
        if a == 1:
            t = t.reshape(-1, n * r1) @ mat.T  # (B n_1..n_{k-1}, r_{k-1} m_k): one GEMM
        else:
            t = torch.matmul(mat, t.reshape(-1, n * r1, a))  # (B n_1..n_{k-1}, r_{k-1} m_k, A)
        a *= m
    return t.reshape(b, -1)  # (B, r_0 = 1, m_1..m_d)


def contract_ltr(x: Tensor, cores: Sequence[Tensor]) -> Tensor:
    """``x`` (B, N') -> ``W x`` (B, M'), core 1 first."""
    b = x.shape[0]
    rest = x.shape[1]
    t = x
    for core in cores:
        r0, m, n, r1 = core.shape
        mat = core.permute(1, 3, 0, 2).reshape(m * r1, r0 * n)  # rows (m_k, r_k), columns (r_{k-1}, n_k)
        rest //= n
        if rest == 1:
            t = t.reshape(-1, r0 * n) @ mat.T  # (B m_1..m_{k-1}, m_k r_k): one GEMM
        else:
            t = torch.matmul(mat, t.reshape(-1, r0 * n, rest))  # (B m_1..m_{k-1}, m_k r_k, N)
    return t.reshape(b, -1)  # (B, m_1..m_d, r_d = 1)


def chain_macs(out_shape: Sequence[int], in_shape: Sequence[int], ranks: Sequence[int], rtl: bool) -> int:
    """Multiply-adds per example of the plain chain (Novikov et al. 2015); ``ranks`` are the d - 1 inner ones.

    rtl step k: ``(n_1..n_{k-1}) (m_{k+1}..m_d) n_k r_k r_{k-1} m_k``; ltr step k:
    ``(m_1..m_{k-1}) (n_{k+1}..n_d) r_{k-1} n_k m_k r_k``: the same terms with the roles of the
    already-absorbed and not-yet-absorbed modes swapped.
    """
    m, n, r, d = out_shape, in_shape, (1, *ranks, 1), len(in_shape)
    if rtl:
        return sum(math.prod(n[:k]) * math.prod(m[k + 1:]) * n[k] * r[k + 1] * r[k] * m[k] for k in range(d))
    return sum(math.prod(m[:k]) * math.prod(n[k + 1:]) * r[k] * n[k] * m[k] * r[k + 1] for k in range(d))


def merge_macs(out_shape: Sequence[int], in_shape: Sequence[int], ranks: Sequence[int],
               sizes: Sequence[int]) -> int:
    """Multiply-adds of building the super-cores of ``sizes`` (once per call, whatever the batch)."""
    r, total, start = (1, *ranks, 1), 0, 0
    for size in sizes:
        rows = r[start] * out_shape[start] * in_shape[start]  # the growing super-core, as (rows, r)
        for k in range(start + 1, start + size):
            total += rows * r[k] * out_shape[k] * in_shape[k] * r[k + 1]
            rows *= out_shape[k] * in_shape[k]
        start += size
    return total


def _merged_shapes(out_shape: Sequence[int], in_shape: Sequence[int], ranks: Sequence[int],
                   sizes: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """Output modes, input modes and inner ranks of the train merged by ``sizes``."""
    r, m, n, kept, start = (1, *ranks, 1), [], [], [], 0
    for size in sizes:
        m.append(math.prod(out_shape[start:start + size]))
        n.append(math.prod(in_shape[start:start + size]))
        start += size
        kept.append(r[start])
    return m, n, kept[:-1]


def plan_macs(out_shape: Sequence[int], in_shape: Sequence[int], ranks: Sequence[int], sizes: Sequence[int],
              rtl: bool) -> tuple[int, int]:
    """(multiply-adds per call, per example) of the chain after merging by ``sizes``."""
    return (merge_macs(out_shape, in_shape, ranks, sizes),
            chain_macs(*_merged_shapes(out_shape, in_shape, ranks, sizes), rtl=rtl))


def _step_seconds(rows: int, k: int, cols: int, matrices: int) -> float:
    """One product of ``matrices`` (rows x k) @ (k x cols) matrices (a single GEMM if 1)."""
    pad = math.ceil(min(rows, cols) / _VECTOR) * _VECTOR / min(rows, cols)  # short vectors waste lanes
    extra = _PER_MATRIX * matrices if matrices > 1 else 0.0
    return _CALL + extra + _PER_MAC * matrices * rows * k * cols * pad


def plan_seconds(out_shape: Sequence[int], in_shape: Sequence[int], ranks: Sequence[int],
                 sizes: Sequence[int], rtl: bool, batch: int) -> float:
    """Modelled seconds of one call on ``batch`` examples with the cores merged by ``sizes``."""
    m, n, r_in = _merged_shapes(out_shape, in_shape, ranks, sizes)
    r, d = (1, *r_in, 1), len(m)
    seconds = sum(2 * _CALL for size in sizes if size > 1) + _PER_MAC * merge_macs(out_shape, in_shape, ranks, sizes)
    for k in (range(d - 1, -1, -1) if rtl else range(d)):
        if rtl:  # (B n_1..n_{k-1}) matrices (r_{k-1} m_k, n_k r_k) @ (n_k r_k, m_{k+1}..m_d)
            lead, rows, inner, free = batch * math.prod(n[:k]), r[k] * m[k], n[k] * r[k + 1], math.prod(m[k + 1:])
        else:    # (B m_1..m_{k-1}) matrices (m_k r_k, r_{k-1} n_k) @ (r_{k-1} n_k, n_{k+1}..n_d)
            lead, rows, inner, free = batch * math.prod(m[:k]), m[k] * r[k + 1], r[k] * n[k], math.prod(n[k + 1:])
            seconds += _CALL  # the core's permuted copy
        if free == 1:  # one GEMM over all leading rows
            seconds += _step_seconds(lead, inner, rows, 1)
        else:
            seconds += _step_seconds(rows, inner, free, lead)
    return seconds


@functools.lru_cache(maxsize=4096)
def plan_groups(out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...], rtl: bool,
                batch: int) -> tuple[int, ...]:
    """The merge (run lengths of consecutive cores) with the least modelled time at ``batch``;
    the plain chain (all ones) on ties. Cached: the forward pass asks on every call."""
    d = len(in_shape)
    candidates = [tuple(b - a for a, b in zip((0, *cuts), (*cuts, d)))
                  for k in range(d) for cuts in itertools.combinations(range(1, d), k)]
    return min(candidates, key=lambda s: (plan_seconds(out_shape, in_shape, ranks, s, rtl, batch), len(s) != d))
