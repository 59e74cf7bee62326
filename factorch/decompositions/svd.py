"""Truncated SVD with the balanced sqrt(Sigma) split (methods.md section 3.4)."""
from __future__ import annotations

import torch
from torch import Tensor


def balanced_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-``rank`` factors ``(A, B)`` with ``matrix ~= A @ B`` (Eckart-Young).

    ``matrix`` is (N, C); returns ``A = U_R sqrt(S_R)`` (N, R) and ``B = sqrt(S_R) V_R^T`` (R, C) in
    float64 on its device. Splitting sqrt(Sigma) to both sides keeps the two factors equally scaled, which
    conditions fine-tuning better than putting Sigma on one side.
    """
    m = matrix.detach().to(dtype=torch.float64)
    if not 1 <= rank <= min(m.shape):
        raise ValueError(f"SVD rank {rank} is outside [1, {min(m.shape)}] for a {tuple(m.shape)} matrix")
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


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
