"""Shared by the generic tests: dense layers of many geometries and every registered method, paired
wherever the method's handler applies (``factorch.registry``), so a new method is tested as soon as
it is registered."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch import handlers as _handlers  # noqa: F401  (fills the registry)
from factorch.registry import Candidate, candidate

# (id, factory, input shape without the batch): kernels 1/3/5/(1,7), strides, asymmetric and 'same'
# padding, padding modes, dilation, groups, bias, odd input sizes
DENSE = [
    ("conv3x3", lambda: nn.Conv2d(8, 12, 3, padding=1), (8, 11, 13)),
    ("conv3x3-s2-g2", lambda: nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2), (8, 11, 13)),
    ("conv5x5-d2-p(2,0)-g4-nobias", lambda: nn.Conv2d(8, 16, 5, dilation=2, padding=(2, 0), groups=4, bias=False),
     (8, 15, 13)),
    ("conv1x7-same-reflect", lambda: nn.Conv2d(6, 6, (1, 7), padding="same", padding_mode="reflect"), (6, 9, 11)),
    ("conv3x3-s(2,1)-circular", lambda: nn.Conv2d(12, 8, 3, stride=(2, 1), padding=1, padding_mode="circular"),
     (12, 9, 7)),
    ("conv1x1-s2-p1", lambda: nn.Conv2d(8, 12, 1, stride=2, padding=1), (8, 11, 13)),
    ("conv1x1-g2-nobias", lambda: nn.Conv2d(8, 8, 1, groups=2, bias=False), (8, 7, 9)),
    ("linear", lambda: nn.Linear(24, 30), (24,)),
    ("linear-rows", lambda: nn.Linear(20, 12, bias=False), (5, 20)),
]

# Layers called with several inputs (an attention's query, key and value; input shape ``(L_q, L_k)``):
# the generic tests that need no forward (rank spaces, counts through ``example_input``) run over them
# too; the ones that call a layer on one tensor or read its ``weight`` do not apply, and
# tests/layers/test_attention.py checks the same properties with the attention's inputs.
ATTENTION = [
    ("mha", lambda: nn.MultiheadAttention(16, 4), (5, 7)),
    ("mha-batch-first-nobias", lambda: nn.MultiheadAttention(12, 3, bias=False, batch_first=True), (6, 6)),
    ("mha-kdim-vdim-bias-kv-zero-attn", lambda: nn.MultiheadAttention(16, 2, add_bias_kv=True, add_zero_attn=True,
                                                                       kdim=10, vdim=24, batch_first=True), (4, 9)),
]

# every registered method, plus the structure variants a config can choose
METHODS = [cls(rank=1) for _, cls in sorted(fc.Method.by_name.items())] + [fc.TT(rank=1, conv_order="conventional")]


def _label(method):
    extra = "-conventional" if getattr(method, "conv_order", "efficient") != "efficient" else ""
    return method.name + extra


def pairs(cases=DENSE):
    """``pytest.param(method, make_dense, input_shape)`` for every (method, dense layer of ``cases``)
    it handles."""
    out = []
    for method in METHODS:
        for name, make, shape in cases:
            if isinstance(candidate(method, make()), Candidate):
                out.append(pytest.param(method, make, shape, id=f"{_label(method)}-{name}"))
    return out


def attention_pairs():
    """``pairs`` of the ``ATTENTION`` layers."""
    return pairs(ATTENTION)


def layer_classes(attention: bool = True):
    """Every factorized layer class some registered method builds (each must appear in ``pairs``
    or, ``attention``, in ``attention_pairs``)."""
    cases = DENSE + ATTENTION if attention else DENSE
    return {candidate(m, make()).layer_cls for m in METHODS for _, make, _ in cases
            if isinstance(candidate(m, make()), Candidate)}


def example_input(dense, shape, batch=1):
    """Zeros a layer of ``dense``'s kind takes, ``batch`` examples of ``shape``: one tensor, or an
    attention's ``(query, key, value)`` for ``shape = (L_q, L_k)``."""
    if not isinstance(dense, nn.MultiheadAttention):
        return torch.zeros(batch, *shape)
    (lq, lk), e = shape, dense.embed_dim
    place = (lambda n, d: (batch, n, d)) if dense.batch_first else (lambda n, d: (n, batch, d))
    return torch.zeros(place(lq, e)), torch.zeros(place(lk, dense.kdim)), torch.zeros(place(lk, dense.vdim))
