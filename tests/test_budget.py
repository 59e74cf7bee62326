"""fc.Budget: whole-model rank allocation meets its target, keeps the most energy, never exceeds full rank."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.registry import Proposal

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_decomposition(monkeypatch):
    """Build proposals as freshly initialised layers instead of decomposing: the allocation (what is
    tested here) is unchanged, and VGG-19's HOOI/ALS runs are skipped."""
    monkeypatch.setattr(Proposal, "build", Proposal.empty)


def _governed_cost(model, names, kind, x):
    """Independent count of the governed layers' cost: fc.count's forward hooks on the real modules."""
    if kind == "params":
        return sum(sum(p.numel() for p in model.get_submodule(n).parameters()) for n in names)
    counts = fc.count(model, x)
    return sum(counts.under(n)[1] for n in names)


@pytest.mark.parametrize("arch", ["vgg19", "resnet56"])
@pytest.mark.parametrize("method,budget", [
    (fc.Tucker2, fc.Budget(macs=0.4)), (fc.Tucker2, fc.Budget(params=0.1)), (fc.CP, fc.Budget(macs=0.3)),
])
def test_budget_meets_its_target(no_decomposition, arch, method, budget):
    torch.manual_seed(0)
    model = fc.models.create(arch)
    x = torch.zeros(1, 3, 32, 32)
    dense = fc.models.create(arch)
    dense.load_state_dict(model.state_dict())
    report = fc.decompose_(model, [method(budget), fc.SVD(budget)], example_input=x)
    (result,) = report.budgets
    governed = [r.name for r in report.rows if r.method is not None]
    assert result.layers == len(governed) == len(report.rows)  # every conv and the classifier
    assert report.decomposed == report.rows  # the allocation never gives a layer that is not cheaper
    before = _governed_cost(dense, governed, budget.kind, x)
    after = _governed_cost(model, governed, budget.kind, x)
    assert (result.before, result.after) == (before, after)
    assert budget.fraction - 0.01 <= after / before <= budget.fraction  # at most the target, not far below
    for r in report.rows:  # never above full rank
        layer = dense.get_submodule(r.name)
        if isinstance(layer, nn.Linear):
            assert r.ranks[0] <= min(layer.in_features, layer.out_features)
        elif method is fc.Tucker2:
            assert r.ranks[0] <= layer.out_channels and r.ranks[1] <= layer.in_channels
        else:
            assert r.ranks[0] <= fc.layers.CPConv2d.max_rank(fc.layers.conv_spec.ConvSpec.of(layer))
    assert f"keep {result.fraction:.4f} of their {budget.kind}" in str(report)


def test_greedy_gives_an_exactly_low_rank_layer_its_rank_and_the_rest_elsewhere():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64))  # rank 4: nothing to gain past 4
    report = fc.decompose_(model, fc.SVD(fc.Budget(params=0.5)), example_input=torch.zeros(1, 64))
    rows = {r.name: r for r in report.rows}
    assert rows["0"].ranks == (4,) and rows["0"].error < 1e-6
    assert rows["2"].ranks[0] > 4  # the budget left over goes to the full-rank layer
    assert 0.49 <= report.budgets[0].fraction <= 0.5


def test_budget_validation_and_errors():
    for bad in [dict(), dict(macs=0.4, params=0.1), dict(macs=0.0), dict(macs=1.5), dict(params=-1),
                dict(macs=float("nan")), dict(macs="0.4")]:
        with pytest.raises(ValueError, match=r"macs=F or params=F|\(0, 1\]"):
            fc.Budget(**bad)
    conv = nn.Conv2d(8, 8, 3)
    with pytest.raises(ValueError, match="whole-model rule"):
        fc.layers.TuckerConv2d.from_dense(conv, fc.Budget(macs=0.5))
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3))
    with pytest.raises(ValueError, match="needs example_input"):
        fc.plan(model, fc.Tucker2(fc.Budget(macs=0.5)))
    with pytest.raises(ValueError, match="cannot be met.*valid fractions"):
        fc.plan(model, fc.Tucker2(fc.Budget(macs=0.001)), example_input=torch.zeros(1, 3, 12, 12))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        fc.decompose_(model, fc.Tucker2(fc.Budget(params=0.001)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_params_budget_without_example_input_and_excluded_layers():
    torch.manual_seed(0)
    model = fc.models.create("resnet20")
    report = fc.plan(model, [fc.Tucker2(fc.Budget(params=0.3)), fc.SVD(0.5)],
                     filter_fn=lambda m, name: name != "conv1")
    (result,) = report.budgets
    assert result.layers == 18  # 18 kxk convs; conv1 excluded, fc is SVD's with its own rank
    assert 0.29 <= result.fraction <= 0.3


@pytest.mark.parametrize("rank,ok", [("budget:macs=0.4", True), ("budget:params=0.2", True),
                                     ("budget:flops=0.3", False), ("budget:macs=1.5", False),
                                     ("budget:macs=x", False), ("budget:", False)])
def test_cli_budget(tmp_path, capsys, rank, ok):
    from factorch.cli.main import run

    out = tmp_path / "o.pt"
    code = run(["decompose", "--model", "resnet20", "--method", "cp,svd", "--rank", rank, "-o", str(out)])
    captured = capsys.readouterr()
    if ok:
        assert code == 0 and "the 20 layers it governs keep" in captured.out
    else:
        err = captured.err.strip().splitlines()
        assert code == 2 and len(err) == 1 and ("macs=F" in err[0] or "(0, 1]" in err[0]) and not out.exists()
