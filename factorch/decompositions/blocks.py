"""Float64 products with a matrix kept in its own dtype: a float32 weight is never copied whole to
float64 (twice its memory); each product converts one block of rows or columns at a time
(``docs/math.md``, "Cost of computing a decomposition"). Used by the SVD routes, TT-SVD and the
report's error column."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

# at most 1/8 of the matrix per block (and at least 2^20 elements, so small matrices take few blocks)
_BLOCKS, _MIN_BLOCK = 8, 1 << 20


def _span(count: int, other: int) -> int:
    """Rows (of ``count``) per block of a matrix whose rows have ``other`` elements."""
    per = max(-(-count * other // _BLOCKS), _MIN_BLOCK) // max(other, 1)
    return max(1, min(count, per))


def _row_blocks(w: Tensor) -> Iterator[tuple[slice, Tensor]]:
    """``(rows, w[rows] in float64)`` block by block."""
    step = _span(w.shape[0], w.shape[1])
    for i in range(0, w.shape[0], step):
        yield slice(i, i + step), w[i:i + step].to(torch.float64)


def _col_blocks(w: Tensor) -> Iterator[tuple[slice, Tensor]]:
    """``(cols, w[:, cols] in float64)`` block by block."""
    step = _span(w.shape[1], w.shape[0])
    for j in range(0, w.shape[1], step):
        yield slice(j, j + step), w[:, j:j + step].to(torch.float64)


def mm64(w: Tensor, x: Tensor) -> Tensor:
    """``w @ x`` (m, k) in float64 for ``w`` (m, n) in any float dtype and ``x`` (n, k) float64, by
    row blocks of ``w`` (a float64 ``w`` is used as it is)."""
    if w.dtype == torch.float64:
        return w @ x
    out = x.new_empty(w.shape[0], x.shape[1])
    for rows, block in _row_blocks(w):
        torch.mm(block, x, out=out[rows])
    return out


def tmm64(w: Tensor, x: Tensor) -> Tensor:
    """``w^T @ x`` (n, k) in float64 for ``w`` (m, n) and ``x`` (m, k) float64, by column blocks of
    ``w``: each block of the result is one product (row blocks would update all of it each time)."""
    if w.dtype == torch.float64:
        return w.T @ x
    out = x.new_empty(w.shape[1], x.shape[1])
    for cols, block in _col_blocks(w):
        torch.mm(block.T, x, out=out[cols])
    return out


def gram64(w: Tensor) -> Tensor:
    """``w^T w`` (n, n) in float64 for ``w`` (m, n) in any float dtype: row block ``J`` of the
    Gram is ``(w^T w[:, J])^T``, one ``tmm64`` per column block."""
    if w.dtype == torch.float64:
        return w.T @ w
    out = torch.empty(w.shape[1], w.shape[1], dtype=torch.float64, device=w.device)
    for cols, block in _col_blocks(w):
        out[cols] = tmm64(w, block).T
    return out


def squared_norm(t: Tensor) -> float:
    """``||t||_F^2`` accumulated in float64, block by block: ``vector_norm(t, dtype=float64)`` casts
    the whole tensor to float64 first (twice a float32 tensor's memory)."""
    if t.dtype == torch.float64:
        return float(torch.linalg.vector_norm(t)) ** 2
    flat = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)
    return sum(float(torch.linalg.vector_norm(block)) ** 2 for _, block in _row_blocks(flat))
