"""fc.decompose_(..., from_scratch=True): handled layers become freshly initialised factorized layers
at fixed ranks, fractions or a budget; rules, which read trained weights, are refused."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers import SVDLinear, TuckerConv2d

pytestmark = pytest.mark.usefixtures("one_thread")


def _model():
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))


X = torch.zeros(1, 3, 16, 16)


def test_from_scratch_replaces_layers_by_fresh_ones_at_the_asked_ranks():
    torch.manual_seed(0)
    model = _model().double().eval()
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")}
    report = fc.decompose_(model, [fc.Tucker2(0.25), fc.SVD(4)], example_input=X.double(), from_scratch=True,
                           min_share=0)  # the head too
    assert isinstance(model[2], TuckerConv2d) and isinstance(model[4], TuckerConv2d) and isinstance(model[8], SVDLinear)
    assert model[8].ranks == (4,) and not model[4].training  # eval mode kept, dtype kept
    assert all(p.dtype == torch.float64 for p in model.parameters())
    rows = {r.name: r for r in report.rows}
    assert rows["4"].error is None and rows["4"].params_after == sum(p.numel() for p in model[4].parameters())
    printed = [line.split() for line in str(report).splitlines() if line.startswith("4 ")]
    assert len(printed) == 1 and "fresh" in printed[0]  # no error to print: the layer approximates nothing
    # fresh, not decomposed: the factors do not approximate the old kernel
    w = before["4"].double()
    assert float((model[4].dense_weight() - w).norm() / w.norm()) > 0.9
    # the same ranks as decomposing would give, and the report is the plan's
    planned = fc.plan(_model(), [fc.Tucker2(0.25), fc.SVD(4)], example_input=X, from_scratch=True, min_share=0)
    assert [r.ranks for r in planned.rows] == [r.ranks for r in report.rows]


@pytest.mark.parametrize("rule", [fc.EVBMF(), fc.Energy(0.9), fc.Tolerance(0.1)])
def test_rules_are_refused_from_scratch_with_the_reason(rule):
    model = _model()
    types = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match=r"layer '0'.*from_scratch: .* reads the trained weights' spectra"):
        fc.decompose_(model, fc.Tucker2(rule), from_scratch=True)
    assert [type(m) for m in model.modules()] == types


@pytest.mark.parametrize("method", [fc.Tucker2, fc.Tucker3, fc.CP, fc.TT])
def test_a_budget_from_scratch_meets_its_target(method):
    torch.manual_seed(0)
    model = _model()
    report = fc.decompose_(model, [method(fc.Budget(params=0.2)), fc.SVD(fc.Budget(params=0.2))], example_input=X,
                           from_scratch=True)
    (result,) = report.budgets
    assert 0.19 <= result.fraction <= 0.2 and result.left_dense == 0
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
