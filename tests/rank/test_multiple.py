"""``multiple=M``: the ranks a rule, a fraction or a budget chooses are multiples of M or a mode's full
rank, for every registered method and layer geometry; explicit ranks stay as given."""
import dataclasses

import pytest
import torch

import factorch as fc
from factorch.registry import Candidate, candidate, propose
from tests.cases import METHODS, dense_model, label, method_lists, pairs, with_rank

pytestmark = pytest.mark.usefixtures("one_thread")

M = 2  # the layers of tests.cases have 4 to 30 channels (2 to 30 per group): a grid each can meet


def _space(method, module):
    return candidate(method, module).space(module)


def _on_grid(ranks, space, step=M):
    top = space.ceiling()
    return all(r % step == 0 or r == f or r == t for r, f, t in zip(ranks, space.full, top))


def _proposal(method, module, shape):
    """The proposal, or the reason it is not useful (no fewer MACs, rank 0, ...) as a string."""
    try:
        return propose(method, module, shape)
    except ValueError as e:
        return str(e)


@pytest.mark.parametrize("method,make,shape", pairs())
def test_rule_and_fraction_ranks_on_the_grid(method, make, shape):
    torch.manual_seed(0)
    dense = make()
    space = _space(method, dense)
    checked, useful = 0, 0
    for rank, up in ((fc.Energy(0.9), True), (fc.Energy(0.3), True), (0.5, False), (0.2, False)):
        plain = _proposal(with_rank(method, rank), dense, shape)
        gridded = _proposal(dataclasses.replace(with_rank(method, rank), multiple=M), dense, shape)
        if isinstance(plain, str):
            continue
        useful += 1
        if isinstance(gridded, str):  # raised past the point where the layer gets cheaper: passed over
            raised = up or any(r < min(M, f) for r, f in zip(plain.ranks, space.full))
            assert raised and ("do not reduce MACs" in gridded or "largest worth computing" in gridded), gridded
            continue
        checked += 1
        assert _on_grid(gridded.ranks, space), (rank, gridded.ranks, space.describe())
        for r, g, f in zip(plain.ranks, gridded.ranks, space.full):
            if up:  # a rule keeps at least the energy it asked for
                assert g >= r
            elif r >= M:  # a fraction keeps at most its parameters, except the grid's smallest rank
                assert g <= r
            else:
                assert g == min(M, f)
            assert g - r < M or g == min(M, f)  # the next grid point, not further
    if not useful:
        pytest.skip("no rank of the loop makes this layer cheaper, with or without a grid")


def test_explicit_ranks_stay_as_given():
    conv = torch.nn.Conv2d(32, 48, 3, padding=1)
    assert propose(fc.Tucker2((13, 7), multiple=16), conv, (32, 8, 8)).ranks == (13, 7)
    assert propose(fc.Tucker2(5, multiple=16), conv, (32, 8, 8)).ranks == (5, 5)
    linear = torch.nn.Linear(64, 64)
    assert propose(fc.SVD(9, multiple=8), linear, (64,)).ranks == (9,)


def _models():
    model = dense_model()
    return [pytest.param(methods, id=label(methods)) for methods in method_lists(model.children())]


@pytest.mark.parametrize("methods", _models())
@pytest.mark.parametrize("kind", ["macs", "params"])
def test_budget_ranks_on_the_grid_and_within_target(methods, kind):
    torch.manual_seed(0)
    model = dense_model().eval()
    x = model.example()
    budget = fc.Budget(**{kind: 0.6})
    config = [dataclasses.replace(with_rank(m, budget), multiple=M) for m in methods]
    report = fc.decompose_(model, config, example_input=x)
    assert report.decomposed, "the budget decomposed nothing"
    spaces = {name: _space(next(c for c in config if _handles(c, module)), module)
              for name, module in dense_model().named_children() if any(_handles(c, module) for c in config)}
    for row in report.decomposed:
        assert _on_grid(row.ranks, spaces[row.name]), (row.name, row.ranks, spaces[row.name].describe())
    (result,) = report.budgets
    assert result.after <= result.target * result.before


def _handles(method, module):
    return isinstance(candidate(method, module), Candidate)


def test_budget_steps_by_the_multiple_in_a_real_network():
    """ResNet-18 geometry at 64x64: every Tucker-2/SVD rank a multiple of 16 (or full), MACs within half."""
    torch.manual_seed(0)
    model = fc.models.create("resnet18", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    dense_macs = fc.count(model, x).macs
    budget = fc.Budget(macs=0.5)
    report = fc.decompose_(model, [fc.Tucker2(budget, multiple=16), fc.SVD(budget, multiple=16)], example_input=x)
    ranks = [r for row in report.decomposed for r in row.ranks]
    assert len(report.decomposed) >= 15
    assert all(r % 16 == 0 or r == 3 for r in ranks), ranks  # 3: the stem's full input rank
    (result,) = report.budgets
    assert result.after <= 0.5 * result.before
    assert fc.count(model, x).macs < dense_macs


def test_a_rule_moved_to_the_grid_is_noted():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(24, 40, 3, padding=1))
    report = fc.decompose_(model, fc.Tucker2(fc.Energy(0.5), multiple=16), example_input=torch.zeros(1, 24, 8, 8))
    (row,) = report.decomposed
    assert all(r % 16 == 0 or r in (24, 40) for r in row.ranks)
    assert "rank grid: multiples of 16" in row.note


@pytest.mark.parametrize("bad", [0, -16, 2.5, True, "16"])
@pytest.mark.parametrize("method", METHODS, ids=label)
def test_bad_multiple_is_one_clear_error(method, bad):
    with pytest.raises(ValueError, match=rf"{type(method).__name__} multiple must be an int >= 1.*got {bad!r}"):
        dataclasses.replace(method, multiple=bad)


@pytest.mark.parametrize("method", METHODS, ids=label)
def test_repr_shows_the_multiple_only_when_set(method):
    """Run checkpoints compare method settings by repr: configs written before ``multiple`` read the same."""
    plain = repr(method)
    assert "multiple" not in plain
    assert plain == repr(eval(plain, {**vars(fc), "Budget": fc.Budget}))
    gridded = dataclasses.replace(method, multiple=8)
    assert repr(gridded) == plain[:-1] + ", multiple=8)"
    assert eval(repr(gridded), vars(fc)) == gridded
