"""The one decision path (factorch.registry.decide): a list means the first method that handles a
layer usefully, notes on ranks that differ from what was asked, and one clear error naming the
layer for broken input -- the model always left untouched."""
import copy
import re

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers import FactorizedLayer, SVDLinear, TTLinear, TuckerConv2d
from factorch.registry import candidate, layer_label
from tests.cases import METHODS, Branches, one_per_class, pairs, with_rank


def _snapshot(model):
    return [(n, t.clone()) for n, t in model.state_dict().items()], [type(m) for m in model.modules()]


def _same(model, snap):
    state, types = snap
    now = model.state_dict()
    return types == [type(m) for m in model.modules()] and all(
        torch.equal(now[n], t) or (torch.isnan(t).any() and torch.equal(now[n].isnan(), t.isnan())) for n, t in state)


def test_a_list_passes_over_a_method_that_does_not_reduce_macs():
    """[TT(8), SVD(8)] on a 64->10 Linear: TT's ranks cost more MACs than the dense layer, so SVD
    decomposes it and the report says why TT was passed over. (Specific methods: a known case
    where the first method is not useful and the second is.)"""
    model = nn.Sequential(nn.Linear(64, 10))
    report = fc.decompose_(model, [fc.TT(8), fc.SVD(8)], example_input=torch.zeros(1, 64))
    (row,) = report.rows
    assert isinstance(model[0], SVDLinear) and row.method == "svd" and row.ranks == (8,)
    assert "tt passed over: ranks" in row.note and "do not reduce MACs" in row.note
    assert "tt passed over" in str(report)
    # alone, TT leaves it dense with that reason; the order of the list matters
    alone = fc.plan(nn.Sequential(nn.Linear(64, 10)), fc.TT(8), example_input=torch.zeros(1, 64))
    assert "do not reduce MACs" in alone.rows[0].skipped
    first = fc.plan(nn.Sequential(nn.Linear(64, 10)), [fc.SVD(8), fc.TT(8)], example_input=torch.zeros(1, 64))
    assert first.rows[0].method == "svd" and not first.rows[0].note


def test_a_list_passes_over_rank_zero_and_reports_every_reason_when_nothing_is_useful():
    """Specific methods with known outcomes on a random 64x64 Linear: EVBMF gives SVD rank 0, TT(64)
    costs more MACs than the dense layer."""
    model = nn.Sequential(nn.Linear(64, 64))  # random init: EVBMF finds only noise
    report = fc.plan(model, [fc.SVD(fc.EVBMF()), fc.TT(64)], example_input=torch.zeros(1, 64))
    (row,) = report.rows
    assert not row.decomposed and row.method == "svd"
    assert "svd: rank 0 from EVBMF" in row.skipped and "tt: ranks" in row.skipped
    fallback = fc.plan(model, [fc.SVD(fc.EVBMF()), fc.SVD(0.25)], example_input=torch.zeros(1, 64))
    assert fallback.rows[0].decomposed and "svd passed over: rank 0" in fallback.rows[0].note


@pytest.mark.parametrize("method,make,shape", pairs())
def test_a_fraction_below_rank_1_is_noted(method, make, shape):
    """Every (method, layer) pair: a fraction of the parameters that even rank 1 exceeds gives rank 1
    in every mode, and the row's note says how much those ranks keep (bias excluded)."""
    torch.manual_seed(0)
    model = nn.Sequential(make())
    report = fc.plan(model, with_rank(method, 0.001), example_input=torch.zeros(1, *shape))
    (row,) = report.rows
    modes = candidate(method, model[0]).space(model[0]).modes
    assert row.ranks == (1,) * len(modes)
    # rank 1 can still cost more MACs than the dense layer (TT's conventional order on a strided
    # transposed conv): then it is skipped, and says so
    assert row.decomposed or "do not reduce MACs" in row.skipped
    assert "fraction 0.001 is below rank 1" in row.note
    bias = model[0].bias.numel() if model[0].bias is not None else 0
    kept = (row.params_after - bias) / (row.params_before - bias)
    assert kept > 0.001 and f"keep {kept:.3g} of the weights" in row.note
    assert "below rank 1" in str(report) or not row.decomposed  # a skipped row's cell holds the reason


def test_an_int_rank_above_full_is_capped_with_a_note():
    """Tucker-2's two channel modes: 12 caps the 3-channel input mode only (a per-mode cap where the
    layer stays cheaper than dense)."""
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))
    report = fc.decompose_(model, fc.Tucker2(12), example_input=torch.zeros(1, 3, 16, 16))
    first, second = report.rows
    assert first.ranks == (12, 3) and "capped at the full ranks (out 64, in 3)" in first.note
    assert second.ranks == (12, 12) and not second.note


def _two(make, shape):
    """Two copies of one dense layer, 'a' and 'b', in one model (``tests.cases.Branches``)."""
    return Branches([("a", make(), shape), ("b", make(), shape)])


@pytest.mark.parametrize("rank", [fc.EVBMF(), fc.Energy(0.9), fc.Tolerance(0.1), fc.Budget(params=0.3),
                                  fc.Budget(macs=0.5)])
@pytest.mark.parametrize("method,make,shape", one_per_class())
def test_non_finite_weights_are_one_error_naming_the_layer(method, make, shape, rank):
    """Every layer class (each through the first method and dense layer that builds it), every kind
    of rank that reads the weights: one single-line error naming the broken layer, model untouched."""
    model = _two(make, shape)
    with torch.no_grad():
        model.b.weight.view(-1)[5] = float("inf") if isinstance(rank, fc.Energy) else float("nan")
    snap = _snapshot(model)
    for verb in (fc.decompose_, fc.plan):
        with pytest.raises(ValueError, match=rf"layer 'b' \({re.escape(layer_label(model.b))}\).*NaN or Inf") as e:
            verb(model, with_rank(method, rank), example_input=model.example())
        assert "\n" not in str(e.value)
    assert _same(model, snap)


@pytest.mark.parametrize("method,make,shape", one_per_class())
def test_reconstruct_of_a_broken_layer_is_one_error_naming_it(method, make, shape):
    """Every layer class: NaN in a factor, or a factor missing, is one error naming the layer and
    its class; the model is left as it was; intact, every layer is rebuilt."""
    torch.manual_seed(0)
    model = _two(make, shape)
    fc.decompose_(model, with_rank(method, 2), example_input=model.example())
    cls = type(model.b).__name__
    assert isinstance(model.a, FactorizedLayer) and isinstance(model.b, FactorizedLayer)
    broken = copy.deepcopy(model)
    factor, param = next((n, p) for n, p in broken.b.named_parameters() if not n.endswith("bias"))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    snap = _snapshot(broken)
    with pytest.raises(ValueError, match=rf"layer 'b' \({cls}\) has NaN or Inf factors"):
        fc.reconstruct_(broken)
    assert _same(broken, snap) and isinstance(broken.a, FactorizedLayer)
    missing = copy.deepcopy(model)
    delattr(missing.b, factor.split(".")[0])  # the module or parameter holding the first factor
    with pytest.raises(ValueError, match=rf"layer 'b' \({cls}\) cannot be rebuilt as a dense layer: AttributeError"):
        fc.reconstruct_(missing)
    assert isinstance(missing.a, FactorizedLayer) and isinstance(missing.b, FactorizedLayer)
    assert sorted(fc.reconstruct_(model)) == ["a", "b"]
    assert type(model.a) is type(model.b) is type(make())


@pytest.mark.parametrize("verb", [fc.decompose_, fc.plan])
def test_a_meta_device_model_is_one_clear_error(verb):
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Linear(6, 6))
    with pytest.raises(ValueError, match=r"on the meta device \(e.g. '0.weight'\).*to_empty"):
        verb(model, [with_rank(m, 0.5) for m in METHODS])  # refused before any method is asked
    assert isinstance(model[0], nn.Conv2d) and model[0].weight.is_meta


def test_tt_budget_allocates_bonds():
    """Budget works for tensor trains too: bonds are scored by the full tensor's bond unfoldings
    (TT-specific: the bond structure)."""
    for budget in (fc.Budget(params=0.05), fc.Budget(macs=0.3)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
        report = fc.decompose_(model, fc.TT(budget), example_input=torch.zeros(1, 256))
        assert all(isinstance(m, TTLinear) for m in (model[0], model[2]))
        assert budget.fraction - 0.01 <= report.budgets[0].fraction <= budget.fraction


def test_propose_is_the_decision_for_one_layer_and_method():
    """Tucker-2 as the example: its rank formula and its 1x1 refusal are known."""
    conv = nn.Conv2d(16, 32, 3, padding=1)
    proposal = fc.registry.propose(fc.Tucker2(0.25), conv, (16, 8, 8))
    assert proposal.layer_cls is TuckerConv2d and proposal.ranks == TuckerConv2d.resolve_rank(conv, 0.25)
    assert isinstance(proposal.build(conv), TuckerConv2d)
    with pytest.raises(ValueError, match="does not decompose.*1x1 conv: Tucker-2 needs"):
        fc.registry.propose(fc.Tucker2(2), nn.Conv2d(16, 32, 1))
    with pytest.raises(ValueError, match="do not reduce MACs"):
        fc.registry.propose(fc.Tucker2((32, 16)), conv, (16, 8, 8))


def _count_resolves(monkeypatch):
    """Route every factorch module's ``resolve`` (the one resolver, however imported) through a
    counter; returns the list of the rank spaces' layer names it was called for."""
    import sys

    original, calls = sys.modules["factorch.rank.resolve"].resolve, []

    def counting(spec, space):
        calls.append(space.layer)
        return original(spec, space)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("factorch") and getattr(module, "resolve", None) is original:
            monkeypatch.setattr(module, "resolve", counting)
    return calls


def _every_method():
    """A small model and one method per layer: every factorized class, ints (one capped), fractions, a rule."""
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1),
                          nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 32, 1), nn.Conv2d(32, 32, 3, padding=1),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 256), nn.Linear(256, 64))
    methods = {"0": fc.Tucker2(10), "1": fc.Tucker3(0.3), "2": fc.CP(4), "3": fc.SVD(fc.Energy(0.6)),
               "4": fc.TT(0.3), "7": fc.TT(4), "8": fc.SVD(4)}
    return model, methods


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("how", ["weights", "calibration", "from_scratch"])
def test_the_decision_path_resolves_each_layer_once(monkeypatch, how):
    """``decide`` resolves each layer's rank spec once; the layer is then built at those ints
    (``from_dense_at``/``empty_at``, also data-aware and from scratch) without resolving again."""
    torch.manual_seed(0)
    model, methods = _every_method()
    if how == "from_scratch":
        methods["3"] = fc.SVD(0.5)  # rules need trained weights
    calls = _count_resolves(monkeypatch)
    x = torch.randn(1, 8, 6, 6)
    kwargs = {"calibration": list(torch.randn(32, 8, 6, 6).split(8))} if how == "calibration" else \
        {"from_scratch": True} if how == "from_scratch" else {}
    report = fc.decompose_(model, methods, example_input=x, **kwargs)
    assert len(report.decomposed) == len(methods) == len(calls), (str(report), calls)
    assert sorted(calls) == sorted(type(model[int(n)]).__name__ for n in methods)  # each layer once
    assert "capped at the full ranks" in report.rows[0].note


@pytest.mark.usefixtures("one_thread")
def test_loading_a_checkpoint_builds_at_the_stored_ints_without_resolving(monkeypatch, tmp_path):
    torch.manual_seed(0)
    model, methods = _every_method()
    fc.decompose_(model, methods, example_input=torch.randn(1, 8, 6, 6))
    fc.save(model, tmp_path / "m.pt")
    calls = _count_resolves(monkeypatch)
    loaded = fc.load(tmp_path / "m.pt", _every_method()[0])
    assert calls == [] and [type(m) for m in loaded] == [type(m) for m in model]


def test_registry_holds_exactly_the_concrete_layer_classes():
    from factorch.layers import CPConv2d, SVDConv2d, SVDMultiheadAttention, TTConv2d, Tucker3Conv2d
    from factorch.layers.base import FactorizedConv, FactorizedLayer

    ours = {c for c in FactorizedLayer.registry.values() if c.__module__.startswith("factorch.")}
    assert ours == {CPConv2d, SVDConv2d, SVDLinear, SVDMultiheadAttention, TTConv2d, TTLinear, Tucker3Conv2d,
                    TuckerConv2d}
    assert FactorizedConv not in FactorizedLayer.registry.values()
