"""Pure tensor math (no nn.Module): singular values and truncated SVD (exact, Gram, randomized),
Tucker-2, CP, tensor-train and EVBMF.

Every function computes in float64 on its input's device (a CUDA weight is decomposed on the GPU)
and returns float64 tensors there; the layers cast the result to their own dtype. EVBMF alone
finishes on the CPU: after the Gram's eigenvalues it is a scalar search.
The math and its sources: ``docs/math.md``.
"""
from factorch.decompositions.cp import cp_als, cp_to_tensor
from factorch.decompositions.evbmf import evbmf, tau_bar
from factorch.decompositions.svd import balanced_svd, energy_rank, singular_values, tolerance_rank, truncated_svd
from factorch.decompositions.svd_cost import svd_method
from factorch.decompositions.tt import (balanced_factors, interleave, max_tt_ranks, tensorize, tt_matrix_svd,
                                        tt_matrix_to_matrix, tt_params, tt_svd, tt_to_tensor)
from factorch.decompositions.tucker import HOOI_TOL, hooi, hosvd, hosvd2, tucker2, tucker2_to_tensor, tucker3, \
    tucker3_to_tensor

__all__ = [
    "HOOI_TOL",
    "balanced_factors",
    "balanced_svd",
    "cp_als",
    "cp_to_tensor",
    "energy_rank",
    "evbmf",
    "hooi",
    "hosvd",
    "hosvd2",
    "interleave",
    "max_tt_ranks",
    "singular_values",
    "svd_method",
    "tau_bar",
    "tensorize",
    "tolerance_rank",
    "truncated_svd",
    "tt_matrix_svd",
    "tt_matrix_to_matrix",
    "tt_params",
    "tt_svd",
    "tt_to_tensor",
    "tucker2",
    "tucker2_to_tensor",
    "tucker3",
    "tucker3_to_tensor",
]
