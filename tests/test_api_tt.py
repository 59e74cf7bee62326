"""fc.TT through the public API and the CLI: decompose_, save/load, reconstruct_, rank rules, errors."""
import copy

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.cli.main import run
from factorch.layers import TTConv2d, TTLinear


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.point = nn.Conv2d(32, 32, 1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc1 = nn.Linear(32 * 4 * 4, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = torch.relu(self.depthwise(torch.relu(self.point(torch.relu(self.conv(x))))))
        x = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


X = torch.randn(2, 16, 8, 8)


def _low_tt_rank_net(rank=2):
    """Net whose conv/point/fc1 weights are exact TT-rank-``rank`` tensors (random cores rebuilt)."""
    torch.manual_seed(0)
    model = Net().double()
    for name in ("conv", "point", "fc1"):
        dense = getattr(model, name)
        cls = TTLinear if isinstance(dense, nn.Linear) else TTConv2d
        tt = cls.empty_like(dense, rank).double()
        with torch.no_grad():
            for p in tt.parameters():
                p.normal_()
        setattr(model, name, tt.to_dense())
    return model.eval()


def test_decompose_save_load_reconstruct(tmp_path):
    model = Net().eval()
    report = fc.decompose_(model, fc.TT(rank=4), example_input=X[:1])
    rows = {r.name: r for r in report.rows}
    assert isinstance(model.fc1, TTLinear) and isinstance(model.conv, TTConv2d) and isinstance(model.point, TTConv2d)
    assert "groups=1" in rows["depthwise"].skipped and isinstance(model.depthwise, nn.Conv2d)
    assert rows["conv"].macs_after < rows["conv"].macs_before
    assert rows["fc1"].params_after == sum(p.numel() for p in model.fc1.parameters())
    assert fc.count(model, X[:1]).macs == sum(r.macs_after if r.decomposed else r.macs_before for r in report.rows)
    path = tmp_path / "tt.pt"
    fc.save(model, path)
    loaded = fc.load(path, model=Net()).eval()
    assert torch.equal(loaded(X), model(X))
    assert isinstance(loaded.fc1, TTLinear) and loaded.fc1.ranks == model.fc1.ranks
    out = model(X)
    assert sorted(fc.reconstruct_(model)) == sorted(r.name for r in report.decomposed)
    assert isinstance(model.fc1, nn.Linear) and (model(X) - out).abs().max() < 1e-4


def test_conv_order_is_chosen_by_the_method():
    plans = {order: {r.name: r for r in fc.plan(Net(), fc.TT(rank=8, conv_order=order), example_input=X[:1]).rows}
             for order in ("efficient", "conventional")}
    eff, conv = plans["efficient"]["conv"], plans["conventional"]["conv"]
    assert eff.ranks == (4, 8, 8, 4) and conv.ranks == (8, 8)  # bonds: p + q vs d, capped at full
    macs = lambda row: row.macs_after if row.decomposed else int(row.skipped.split("-> ")[1].replace(",", ""))  # noqa
    assert macs(eff) < eff.macs_before < macs(conv)  # Garipov's order costs more than the dense conv here


def test_custom_shapes_and_order_survive_save_load(tmp_path):
    model = Net().eval()
    model.fc1 = TTLinear.from_dense(model.fc1, 3, in_shape=(4, 4, 32), out_shape=(4, 8, 8), order="ltr")
    model.conv = TTConv2d.from_dense(model.conv, 4, in_shape=(2, 2, 4), out_shape=(2, 4, 4), order="conventional")
    fc.save(model, tmp_path / "m.pt")
    loaded = fc.load(tmp_path / "m.pt", model=Net()).eval()
    assert loaded.fc1.in_shape == (4, 4, 32) and loaded.fc1.order == "ltr" and loaded.conv.order == "conventional"
    assert torch.equal(loaded(X), model(X))


@pytest.mark.parametrize("eps", [0.3, 0.1, 0.06])
def test_tolerance_rule_bounds_every_layer_error(eps):
    model = _low_tt_rank_net()
    with torch.no_grad():  # exact TT-rank 2 plus 5% noise
        for p in model.parameters():
            p.add_(0.05 * p.std() * torch.randn_like(p))
    report = fc.decompose_(model, fc.TT(rank=fc.Tolerance(eps)), example_input=X[:1].double())
    decomposed = {r.name: r for r in report.decomposed}
    assert {"conv", "point", "fc1"} <= set(decomposed)
    assert all(r.error <= eps + 1e-9 for r in decomposed.values())


def test_exact_tt_ranks_are_found_and_lossless():
    model = _low_tt_rank_net()
    ref = copy.deepcopy(model)
    x = X.double()
    report = fc.decompose_(model, fc.TT(rank=fc.Tolerance(1e-9)), filter_fn=lambda m, n: n != "fc2")
    assert {r.name: max(r.ranks) for r in report.decomposed} == {"conv": 2, "point": 2, "fc1": 2}
    assert (model(x) - ref(x)).abs().max() < 1e-10


def test_fraction_rank_keeps_at_most_the_fraction():
    model = Net()
    report = fc.decompose_(model, fc.TT(rank=0.1))
    for row in report.decomposed:
        weights = row.params_before - getattr(Net(), row.name).bias.numel()
        assert row.params_after - getattr(model, row.name).bias.numel() <= 0.1 * weights


def test_list_falls_back_for_grouped_convs_and_methods_by_name():
    model = Net()
    fc.decompose_(model, [fc.TT(4), fc.Tucker2((4, 1))], filter_fn=lambda m, n: n == "depthwise")
    assert isinstance(model.depthwise, nn.Conv2d)  # depthwise: neither method applies
    assert fc.Method.from_name("tt", 4) == fc.TT(4)
    assert fc.TT((2, 3, 4)).rank == (2, 3, 4)


@pytest.mark.parametrize("make,match", [
    (lambda: fc.TT(rank=0), ">= 1"),
    (lambda: fc.TT(rank=(2, 0)), ">= 1"),
    (lambda: fc.TT(rank=(2, 2.5)), "ints"),
    (lambda: fc.TT(rank=fc.Tolerance(1.2)), "eps"),
    (lambda: fc.TT(rank=4, conv_order="zigzag"), "conv_order"),
    (lambda: fc.decompose_(Net(), {"fc1": fc.TT(rank=(2, 2, 2, 2, 2, 2))}), "bonds"),
])
def test_bad_ranks_are_clear_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_cli_method_tt(tmp_path, capsys):
    out = tmp_path / "tt.pt"
    assert run(["decompose", "--model", "resnet20", "--method", "tt", "--rank", "4", "-o", str(out)]) == 0
    assert "tt" in capsys.readouterr().out
    model = fc.load(out)
    assert isinstance(model.layer3[0].conv2, TTConv2d)
    assert run(["count", str(out), "--total"]) == 0
    assert run(["decompose", "--model", "resnet20", "--method", "tt", "--rank", "tol:2", "-o", str(out)]) == 2
    assert "eps" in capsys.readouterr().err


@pytest.mark.parametrize("eps", [0.5, 0.2, 0.05])
def test_tolerance_on_svd_layers_is_the_smallest_eckart_young_rank(eps):
    lin = nn.Linear(60, 40).double()
    w = lin.weight.detach()
    s = torch.linalg.svdvals(w)
    (r,) = fc.layers.SVDLinear.resolve_rank(lin, fc.Tolerance(eps))
    tail = lambda k: float(s[k:].pow(2).sum().sqrt())  # noqa: E731
    assert tail(r) <= eps * float(w.norm()) < tail(r - 1)
    layer = fc.layers.SVDLinear.from_dense(lin, fc.Tolerance(eps))
    assert float((layer.dense_weight() - w).norm() / w.norm()) <= eps + 1e-12
