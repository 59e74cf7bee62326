"""fc.decompose_(..., from_scratch=True): handled layers become freshly initialised factorized layers
at fixed ranks, fractions or a budget; rules, which read trained weights, are refused. Every method
list that covers the models (``tests.cases.method_lists``): every registered method and layer class."""
import re

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.rank import resolve
from factorch.registry import candidate
from tests.cases import METHODS, dense_model, handles, label, method_lists, with_rank

pytestmark = pytest.mark.usefixtures("one_thread")


def _model():
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))


X = torch.zeros(1, 3, 16, 16)


def _cheaper(method, dense, shape):
    """Whether ``method``'s ranks make ``dense`` cheaper in MACs at ``shape`` and stay within the
    largest ranks worth computing (CP: ``max(N, C)``); else a list passes it over."""
    space = candidate(method, dense).space(dense)
    ranks = resolve(method.rank, space).ranks
    within = space.limit is None or all(r <= top for r, top in zip(ranks, space.limit.ranks))
    return within and space.macs(ranks, shape) < space.dense_macs(shape)


@pytest.mark.parametrize("methods", [pytest.param(ms, id=f"{label(ms)}-{rank}") for rank in (0.25, 2)
                                     for ms in method_lists(dense_model().children(), rank=rank)])
def test_from_scratch_replaces_layers_by_fresh_ones_at_the_asked_ranks(methods):
    """Every layer of ``tests.cases.DENSE`` becomes a fresh layer of the class built by the first
    method that handles it and makes it cheaper (the others noted as passed over; with none, it
    stays dense), at the ranks that method's fraction or int rank resolves to, in the model's dtype
    and mode; the report counts its parameters and prints no error; the plan gives the same ranks."""
    torch.manual_seed(0)
    model = dense_model().double().eval()
    dense = dict(model.named_children())
    before = {n: m.weight.detach().clone() for n, m in dense.items()}
    x = model.example(dtype=torch.float64)
    report = fc.decompose_(model, methods, example_input=x, from_scratch=True, min_share=0)
    rows = {r.name: r for r in report.rows}
    assert rows.keys() == dense.keys()
    lines = {line.split()[0]: line.split() for line in str(report).splitlines() if line.split()}
    for name, old in dense.items():
        useful = [m for m in methods if handles(m, old) and _cheaper(m, old, model.shapes[name])]
        if not useful:  # no method makes it cheaper within its limit: left dense, with the reason
            why = rows[name].skipped
            assert model.get_submodule(name) is old and ("do not reduce MACs" in why or "worth computing" in why), name
            continue
        method, passed = useful[0], [m for m in methods[:methods.index(useful[0])] if handles(m, old)]
        found, new, row = candidate(method, old), model.get_submodule(name), rows[name]
        assert type(new) is found.layer_cls and row.method == method.name, name
        assert new.ranks == row.ranks == resolve(method.rank, found.space(old)).ranks, name
        assert all(f"{m.name} passed over" in row.note for m in passed), (name, row.note)
        assert not new.training and all(p.dtype == torch.float64 for p in new.parameters()), name  # mode, dtype kept
        assert row.error is None and row.params_after == sum(p.numel() for p in new.parameters()), name
        assert "fresh" in lines[name], lines[name]  # no error to print: the layer approximates nothing
        # fresh, not decomposed: the factors do not approximate the old kernel
        w = before[name].double()
        assert float((new.dense_weight().detach().reshape(w.shape) - w).norm() / w.norm()) > 0.9, name
    assert model(x).shape == dense_model()(x.float()).shape
    # the same ranks as decomposing would give, and the report is the plan's
    planned = fc.plan(dense_model(), methods, example_input=x.float(), from_scratch=True, min_share=0)
    assert [r.ranks for r in planned.rows] == [r.ranks for r in report.rows]


@pytest.mark.parametrize("method", METHODS, ids=label)
@pytest.mark.parametrize("rule", [fc.EVBMF(), fc.Energy(0.9), fc.Tolerance(0.1)])
def test_rules_are_refused_from_scratch_with_the_reason(rule, method):
    """Every method: a rule reads the trained spectra, so from scratch it is one error naming the
    first layer the method handles, and the model is untouched."""
    model = dense_model()
    first = next(name for name, m in model.named_children() if handles(method, m))
    types = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match=rf"layer {re.escape(repr(first))}.*from_scratch: .* reads the trained "
                                         r"weights' spectra"):
        fc.decompose_(model, with_rank(method, rule), from_scratch=True)
    assert [type(m) for m in model.modules()] == types


@pytest.mark.parametrize("methods", method_lists(_model().children(), rank=fc.Budget(params=0.12)), ids=label)
def test_a_budget_from_scratch_meets_its_target(methods):
    """Every method list that covers the model, under one budget: the target is met within 1 %,
    no governed layer is left dense, and the model runs. The target is one every method reaches
    here: TT-conv in the conventional order costs more MACs than these dense convs past bond ranks
    (9, 6), where the allocation stops (at about 0.15 of the parameters)."""
    torch.manual_seed(0)
    model = _model()
    report = fc.decompose_(model, methods, example_input=X, from_scratch=True, min_share=0)  # the head too
    (result,) = report.budgets
    assert 0.11 <= result.fraction <= 0.12 and result.left_dense == 0
    assert result.layers == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in _model().modules())
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
