"""Shared by the generic tests: dense layers of many geometries and every registered method, paired
wherever the method's handler applies (``factorch.registry``), so a new method is tested as soon as
it is registered."""
import pytest
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

# every registered method, plus the structure variants a config can choose
METHODS = [cls(rank=1) for _, cls in sorted(fc.Method.by_name.items())] + [fc.TT(rank=1, conv_order="conventional")]


def _label(method):
    extra = "-conventional" if getattr(method, "conv_order", "efficient") != "efficient" else ""
    return method.name + extra


def pairs():
    """``pytest.param(method, make_dense, input_shape)`` for every (method, dense layer) it handles."""
    out = []
    for method in METHODS:
        for name, make, shape in DENSE:
            if isinstance(candidate(method, make()), Candidate):
                out.append(pytest.param(method, make, shape, id=f"{_label(method)}-{name}"))
    return out


def layer_classes():
    """Every factorized layer class some registered method builds (each must appear in ``pairs``)."""
    return {candidate(m, make()).layer_cls for m in METHODS for _, make, _ in DENSE
            if isinstance(candidate(m, make()), Candidate)}
