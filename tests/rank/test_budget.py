"""fc.Budget: whole-model rank allocation meets its target for every method, keeps the most energy, never
exceeds full rank."""
import copy

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.rank import Item, allocate
from factorch.registry import Candidate, Proposal, candidate, layer_types
from factorch.surgery import swap
from tests.cases import label, method_lists, pairs

pytestmark = pytest.mark.usefixtures("one_thread")


_ARCHS: dict = {}
_ITEMS: dict = {}


def _arch(arch):
    """The model (seeded, created once) and the layers some registered method handles."""
    if arch not in _ARCHS:
        torch.manual_seed(0)
        model = fc.models.create(arch)
        _ARCHS[arch] = model, [(n, m) for n, m in model.named_modules() if isinstance(m, layer_types())]
    return _ARCHS[arch]


def _lists(arch):
    """``(arch, methods)`` for every method list that covers the arch's layers (``tests.cases``)."""
    return [pytest.param(arch, methods, id=f"{arch}-{label(methods)}")
            for methods in method_lists(m for _, m in _arch(arch)[1])]


def _items(arch, methods):
    """Per (arch, method list): the budget items of every layer, each under the first method of the
    list that handles it, at the real input sizes; computed once, so both budget kinds share the
    spectra."""
    key = (arch, tuple(methods))
    if key not in _ITEMS:
        model, layers = _arch(arch)
        x = torch.zeros(1, 3, 32, 32)
        shapes = {r.name: r.input_shape for r in fc.count(model, x).layers}
        items, found = [], {}
        for name, module in layers:
            c = next(c for m in methods if isinstance(c := candidate(m, module), Candidate))
            items.append(Item(name, c.space(module), shapes[name]))
            found[name] = (module, c)
        _ITEMS[key] = (model, x, items, found)
    return _ITEMS[key]


@pytest.mark.parametrize("kind,fraction", [("macs", 0.3), ("params", 0.05)])
@pytest.mark.parametrize("arch,methods", _lists("vgg19") + _lists("resnet56"))
def test_budget_allocation_meets_its_target_for_every_method(arch, methods, kind, fraction):
    """The allocation (``factorch.rank.allocate``) on every conv and the classifier, under every
    method list that covers them: the real modules at the allocated ranks, counted by
    ``fc.count``'s hooks, keep at most the fraction and not far below it; every layer stays cheaper
    than dense and within its full ranks. The targets are ones every method reaches on both nets:
    TT-conv in the conventional order stops at about 0.06 of VGG-19's parameters, where more rank
    would make its layers cost more MACs than dense; CP stops at rank ``max(N, C)`` (the largest
    worth computing), short of VGG-19's MACs target."""
    model, x, items, found = _items(arch, methods)
    budget = fc.Budget(**{kind: fraction})
    ranks, pool = allocate(budget, items)
    assert all(r is not None for r in ranks.values()) and pool.names == [it.name for it in items]
    small = copy.deepcopy(model)
    for name, r in ranks.items():
        module, c = found[name]
        assert all(1 <= v <= m.full for v, m in zip(r, c.space(module).modes))
        swap(small, {name: c.layer_cls.empty_like(module, r, **c.options)})
    dense, counted = fc.count(model, x), fc.count(small, x)
    if kind == "params":
        before = sum(sum(p.numel() for p in model.get_submodule(n).parameters()) for n in ranks)
        after = sum(sum(p.numel() for p in small.get_submodule(n).parameters()) for n in ranks)
    else:
        before, after = (sum(c.under(n)[1] for n in ranks) for c in (dense, counted))
    assert (pool.dense, pool.planned) == (before, after)
    assert after / before <= fraction
    if after / before < fraction - 0.01:  # short of the target only where no layer could take more
        for it in items:
            r, top = ranks[it.name], it.space.limit.ranks if it.space.limit is not None else it.space.full
            for k, m in enumerate(it.space.modes):
                more = tuple(v + (j == k) for j, v in enumerate(r))
                assert r[k] >= min(m.full, top[k]) or it.cost("macs", more) >= it.dense("macs"), (it.name, r, k)
    for name in ranks:  # cheaper than dense, so decompose_ never passes a governed layer over
        assert counted.under(name)[1] < dense.under(name)[1]


def test_budget_through_decompose_is_the_allocation(monkeypatch):
    """decompose_ goes through the decision path and builds what the allocation planned. One method
    list is enough here: the allocation under every list is the test above."""
    monkeypatch.setattr(Proposal, "build", Proposal.empty)  # the allocation is what is tested
    model = fc.models.create("resnet56")
    x = torch.zeros(1, 3, 32, 32)
    report = fc.decompose_(model, [fc.Tucker2(fc.Budget(macs=0.4)), fc.SVD(fc.Budget(macs=0.4))], example_input=x)
    (result,) = report.budgets
    (head,) = report.skipped  # the 64 -> 10 classifier: too small to matter (min_share), not in the pool
    assert head.name == "fc" and head.skipped.startswith("too small to matter")
    assert result.layers == len(report.decomposed) == len(report.rows) - 1 == 55
    assert 0.39 <= result.fraction <= 0.4 and f"keep {result.fraction:.4f} of their macs" in str(report)
    assert result.after == sum(fc.count(model, x).under(r.name)[1] for r in report.decomposed)


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
    code = run(["decompose", "--model", "resnet20", "--method", "tucker2,svd", "--rank", rank, "-o", str(out)])
    captured = capsys.readouterr()
    if ok:
        assert code == 0 and "the 19 layers it governs keep" in captured.out  # the head is too small to matter
    else:
        err = captured.err.strip().splitlines()
        assert code == 2 and len(err) == 1 and ("macs=F" in err[0] or "(0, 1]" in err[0]) and not out.exists()


def _channel_modes(method):
    """Whether ``method``'s layers rank the output and input channels as modes of their own."""
    spaces = [candidate(m, dense).space(dense) for m, make, _ in (p.values for p in pairs())
              if label(m) == label(method) for dense in [make()]]
    return any([mode.name for mode in space.modes][:2] == ["out", "in"] for space in spaces)


@pytest.mark.parametrize("arch,methods", [p for p in _lists("vgg19") if _channel_modes(p.values[1][0])])
def test_budget_starves_no_layer(arch, methods):
    """The allocation maximises the sum of log kept energies: a mode left at rank 1 keeps little
    and has the largest marginal gain, so no conv is squeezed to a rank-1 bottleneck while others
    get hundreds (the plain sum of kept energies gave ResNet-56's and VGG's wide layers ranks
    like (1, 1) and (229, 1)). Every method whose layers have channel modes of their own."""
    _, _, items, _ = _items(arch, methods)
    ranks, _ = allocate(fc.Budget(params=0.05), items)
    for item in items:
        r = ranks[item.name][:2]  # the channel modes (and the classifier's one rank)
        assert min(r) >= 2 and max(r) <= 8 * min(r), (item.name, ranks[item.name])
