"""Shared by the generic tests: dense layers of many geometries and every registered method, paired
wherever the method's handler applies (``factorch.registry``), so a new method is tested as soon as
it is registered. ``Branches`` puts layers of any geometry in one model; ``method_lists`` gives
the method lists that cover a model, one per way the registered methods can share it."""
import dataclasses
import math

import pytest
import torch
from torch import nn

import factorch as fc
from factorch import handlers as _handlers  # noqa: F401  (fills the registry)
from factorch.registry import Candidate, candidate

# (id, factory, input shape without the batch): 2-D kernels 1/3/5/(1,7), strides, asymmetric and 'same'
# padding, padding modes, dilation, groups, bias, odd input sizes; then the same over Conv1d, Conv3d
# and ConvTranspose1d/2d/3d
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
    # 1-D, 3-D and transposed convs: strides, padding ('same' where PyTorch takes it), padding modes,
    # dilation, groups, output_padding, even kernels, pointwise ones, bias on and off
    ("conv1d-k5-s2-p2", lambda: nn.Conv1d(8, 12, 5, stride=2, padding=2), (8, 23)),
    ("conv1d-k3-d2-same-reflect", lambda: nn.Conv1d(6, 10, 3, padding="same", dilation=2, padding_mode="reflect"),
     (6, 17)),
    ("conv1d-k4-g2-nobias", lambda: nn.Conv1d(8, 8, 4, groups=2, bias=False), (8, 15)),
    ("conv1d-k1-s2", lambda: nn.Conv1d(8, 12, 1, stride=2), (8, 15)),
    ("conv3d-3x3x3-s(1,2,2)-p1", lambda: nn.Conv3d(6, 8, 3, stride=(1, 2, 2), padding=1), (6, 5, 7, 9)),
    ("conv3d-1x3x3-g2-circular-nobias",
     lambda: nn.Conv3d(8, 8, (1, 3, 3), padding=(0, 1, 1), groups=2, padding_mode="circular", bias=False),
     (8, 3, 6, 5)),
    ("conv3d-3x1x2-d(2,1,1)-same", lambda: nn.Conv3d(4, 6, (3, 1, 2), padding="same", dilation=(2, 1, 1)),
     (4, 7, 4, 5)),
    ("conv3d-1x1x1-p(1,0,0)", lambda: nn.Conv3d(8, 6, 1, padding=(1, 0, 0)), (8, 3, 4, 5)),
    ("convT1d-k4-s2-p1", lambda: nn.ConvTranspose1d(8, 6, 4, stride=2, padding=1), (8, 9)),
    ("convT1d-k3-s3-op2-nobias", lambda: nn.ConvTranspose1d(6, 8, 3, stride=3, output_padding=2, bias=False), (6, 7)),
    ("convT1d-k1-s2-p1-g2", lambda: nn.ConvTranspose1d(8, 6, 1, stride=2, padding=1, groups=2), (8, 9)),
    ("convT2d-4x4-s2-p1", lambda: nn.ConvTranspose2d(8, 12, 4, stride=2, padding=1), (8, 5, 7)),
    ("convT2d-3x3-s2-p1-op1-d2-g2-nobias", lambda: nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1,
                                                                       dilation=2, groups=2, bias=False), (8, 5, 6)),
    ("convT2d-2x3-s(2,1)-p(0,1)-op(1,0)", lambda: nn.ConvTranspose2d(6, 10, (2, 3), stride=(2, 1), padding=(0, 1),
                                                                      output_padding=(1, 0)), (6, 5, 4)),
    ("convT2d-1x1-s2-op1", lambda: nn.ConvTranspose2d(8, 12, 1, stride=2, output_padding=1), (8, 5, 6)),
    ("convT3d-2x2x2-s2", lambda: nn.ConvTranspose3d(6, 4, 2, stride=2), (6, 3, 4, 5)),
    ("convT3d-3x3x3-s(1,2,2)-p1-op(0,1,1)-g2",
     lambda: nn.ConvTranspose3d(4, 6, 3, stride=(1, 2, 2), padding=1, output_padding=(0, 1, 1), groups=2),
     (4, 3, 4, 3)),
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


def with_rank(method, rank):
    """``method`` at ``rank``, its other fields (e.g. TT's conv order, CP's restarts) kept."""
    return dataclasses.replace(method, rank=rank)


def label(methods) -> str:
    """``tucker2+svd``: a method or a method list in a test id."""
    return "+".join(_label(m) for m in (methods if isinstance(methods, (list, tuple)) else [methods]))


def handles(method, module) -> bool:
    """Whether ``method``'s handler applies to ``module``."""
    return isinstance(candidate(method, module), Candidate)


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


def one_per_class():
    """``pytest.param(method, make_dense, input_shape)``: per factorized layer class and structure
    option some registered method builds, the first (method, dense layer) of ``pairs`` that builds
    it -- every layer class once, for tests too slow to run over every pair."""
    out = {}
    for p in pairs():
        method, make, _ = p.values
        found = candidate(method, make())
        out.setdefault((found.layer_cls, tuple(sorted(found.options.items()))), p)
    return list(out.values())


class Branches(nn.Module):
    """Layers of any geometry in one model: each runs on its own slice of one flat input (batch,
    features), reshaped to its input shape; the outputs are flattened and concatenated.
    ``layers``: (name, module, input shape without the batch); the module is child ``name``."""

    def __init__(self, layers):
        super().__init__()
        self.shapes = {}
        for name, module, shape in layers:
            self.add_module(name, module)
            self.shapes[name] = tuple(shape)

    @property
    def features(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes.values())

    def example(self, batch=1, dtype=torch.float32):
        """A zero input of ``batch`` examples (shapes for costing only)."""
        return torch.zeros(batch, self.features, dtype=dtype)

    def forward(self, x):
        outs, start = [], 0
        for name, module in self.named_children():
            size = math.prod(self.shapes[name])
            outs.append(module(x[:, start:start + size].reshape(-1, *self.shapes[name])).flatten(1))
            start += size
        return torch.cat(outs, 1)


def dense_model():
    """Every layer of ``DENSE`` in one model (``Branches``), named by its id: a layer of each kind
    and geometry the generic tests know, for tests of whole-model paths (decompose_, plan, budgets)."""
    return Branches([(name.replace(".", "_"), make(), shape) for name, make, shape in DENSE])


def method_lists(modules, rank=1):
    """The method lists (at ``rank``) that cover ``modules``, one per distinct way the registered
    methods can share them: for each method of ``METHODS`` that handles one of them, that method
    first, then every other one, in order, that handles a module no method before it handles (one
    config per method name: ``fc.ADMM`` tells a list's methods apart by name). A list that gives
    every module the same method as an earlier one is left out (``[svd, cp]`` and ``[cp, svd]``
    decompose a model alike), so in some list each method takes every module it handles."""
    modules = list(modules)
    out, seen = [], set()
    for method in METHODS:
        if not any(handles(method, m) for m in modules):
            continue
        chosen, left = [method], [m for m in modules if not handles(method, m)]
        for other in METHODS:
            if other.name != method.name and any(handles(other, m) for m in left):
                chosen.append(other)
                left = [m for m in left if not handles(other, m)]
        split = tuple(next((label(c) for c in chosen if handles(c, m)), None) for m in modules)
        if split not in seen:
            seen.add(split)
            out.append([with_rank(m, rank) for m in chosen])
    return out


def example_input(dense, shape, batch=1):
    """Zeros a layer of ``dense``'s kind takes, ``batch`` examples of ``shape``: one tensor, or an
    attention's ``(query, key, value)`` for ``shape = (L_q, L_k)``."""
    if not isinstance(dense, nn.MultiheadAttention):
        return torch.zeros(batch, *shape)
    (lq, lk), e = shape, dense.embed_dim
    place = (lambda n, d: (batch, n, d)) if dense.batch_first else (lambda n, d: (n, batch, d))
    return torch.zeros(place(lq, e)), torch.zeros(place(lk, dense.kdim)), torch.zeros(place(lk, dense.vdim))
