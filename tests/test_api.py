"""decompose_ / plan / reconstruct_: selection, skip reasons, transactional failure, modes, dtypes."""
import copy

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers import CPConv2d, SVDConv2d, SVDLinear, TuckerConv2d


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),  # depthwise
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


X = torch.randn(2, 3, 16, 16)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def test_decompose_whole_model_and_report():
    model = Small().eval()
    report = fc.decompose_(model, [fc.Tucker2(0.5), fc.SVD(0.5)], example_input=X[:1])
    assert isinstance(model.features[0], TuckerConv2d)
    assert isinstance(model.features[3], TuckerConv2d)
    assert isinstance(model.features[5], SVDConv2d)
    assert isinstance(model.features[7], nn.Conv2d)  # depthwise stays
    assert isinstance(model.head, nn.Linear)  # 320 of 0.3M MACs: too small to matter (min_share)
    rows = {r.name: r for r in report.rows}
    assert "depthwise" in rows["features.7"].skipped
    assert rows["head"].skipped.startswith("too small to matter: 320 of the model's ")
    assert rows["features.3"].method == "tucker2" and rows["features.3"].error > 0
    assert rows["features.3"].macs_after < rows["features.3"].macs_before
    assert rows["features.3"].params_after == sum(p.numel() for p in model.features[3].parameters())
    text = str(report)
    assert "features.3" in text and "skipped: depthwise" in text and "total" in text
    # new layers inherit eval mode
    assert not model.features[3].training and not model.features[3].core.training


def test_plan_is_the_same_report_and_leaves_the_model_untouched():
    model = Small()
    before = _state(model)
    planned = fc.plan(model, [fc.Tucker2(0.5), fc.SVD(0.5)], example_input=X[:1])
    after = _state(model)
    assert before[1] == after[1] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    done = fc.decompose_(copy.deepcopy(model), [fc.Tucker2(0.5), fc.SVD(0.5)], example_input=X[:1])
    assert [(r.name, r.ranks, r.params_after, r.skipped) for r in planned.rows] == \
           [(r.name, r.ranks, r.params_after, r.skipped) for r in done.rows]


def test_rank_zero_is_skipped_with_reason():
    model = Small()  # random init: EVBMF finds only noise
    report = fc.decompose_(model, fc.Tucker2(fc.EVBMF()))
    reasons = [r.skipped for r in report.rows if r.method == "tucker2"]
    assert reasons and all("rank 0" in r for r in reasons if "depthwise" not in r)
    assert not any(isinstance(m, TuckerConv2d) for m in model.modules())


def test_no_mac_saving_is_skipped():
    model = Small()
    report = fc.decompose_(model, {"features.3": fc.Tucker2((32, 16))}, example_input=X[:1])
    row = next(r for r in report.rows if r.name == "features.3")
    assert "do not reduce MACs" in row.skipped
    assert isinstance(model.features[3], nn.Conv2d)


def test_dict_config_exact_regex_default_and_none():
    model = Small()
    report = fc.decompose_(model, {
        "features.0": None,
        "re:features\\.(3|9)": fc.CP(8),
        "_default": fc.SVD(0.5),
    }, example_input=X[:1], min_share=0)  # every layer, the small head too
    assert isinstance(model.features[0], nn.Conv2d)
    assert isinstance(model.features[3], CPConv2d) and isinstance(model.features[9], CPConv2d)
    assert isinstance(model.features[5], SVDConv2d) and isinstance(model.head, SVDLinear)
    rows = {r.name: r for r in report.rows}
    assert rows["features.0"].skipped == "left dense by the config"


def test_filter_fn_excludes_layers():
    model = Small()
    fc.decompose_(model, [fc.Tucker2(0.5), fc.SVD(0.5)], filter_fn=lambda m, name: name != "features.3")
    assert isinstance(model.features[3], nn.Conv2d)
    assert isinstance(model.features[9], TuckerConv2d)


@pytest.mark.parametrize("config,match", [
    ({"features.42": fc.Tucker2()}, "unknown layer"),
    ({"re:(": fc.Tucker2()}, "regex"),
    ({"features.7": fc.Tucker2(0.5)}, "depthwise"),       # explicitly asked: unsupported is an error
    ({"head": fc.Tucker2(0.5)}, "not supported"),
    ("tucker2", "method config"),
    ([], "method config"),
])
def test_bad_configs(config, match):
    model = Small()
    before = _state(model)
    with pytest.raises(ValueError, match=match):
        fc.decompose_(model, config)
    assert _state(model)[1] == before[1]


def test_failure_midway_leaves_model_untouched():
    model = Small()
    with torch.no_grad():
        model.features[9].weight[0, 0, 0, 0] = float("nan")  # a late layer
    before = _state(model)
    with pytest.raises(ValueError, match="features.9.*NaN"):
        fc.decompose_(model, [fc.Tucker2(0.5), fc.SVD(0.5)])
    after = _state(model)
    assert before[1] == after[1]
    assert all(torch.equal(before[0][k], after[0][k]) or torch.isnan(before[0][k]).any() for k in before[0])
    with pytest.raises(ValueError, match="exceeds the full rank"):
        fc.decompose_(Small(), fc.Tucker2((16, 16)))  # the first conv has only 3 input channels


def test_bare_layer_is_refused():
    with pytest.raises(ValueError, match="from_dense"):
        fc.decompose_(nn.Conv2d(4, 4, 3), fc.Tucker2(2))


def test_dtype_preserved_and_reconstruct_is_lossless_after_training():
    model = Small().double()
    x = X.double()
    fc.decompose_(model, [fc.Tucker2(0.4), fc.CP(6), fc.SVD(0.5)])
    assert all(p.dtype == torch.float64 for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    y = model(x)
    names = fc.reconstruct_(model)
    assert set(names) == {"features.0", "features.3", "features.5", "features.9", "head"}
    assert not any(isinstance(m, fc.layers.FactorizedLayer) for m in model.modules())
    assert [type(m) for m in model.modules()] == [type(m) for m in Small().modules()]
    assert (model(x) - y).abs().max() < 1e-10


def test_second_decompose_does_not_touch_factorized_layers():
    model = Small()
    fc.decompose_(model, fc.Tucker2(0.5))
    report = fc.decompose_(model, fc.Tucker2(0.5))
    assert not any(r.name.startswith("features.3.") for r in report.rows)


def test_single_input_channel_conv_is_not_called_depthwise():
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    report = fc.decompose_(model, fc.Tucker2(0.5), example_input=torch.zeros(1, 1, 8, 8))
    rows = {r.name: r for r in report.rows}
    assert "one input channel" in rows["0"].skipped and "depthwise" not in rows["0"].skipped
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[2], TuckerConv2d)


def test_layers_too_small_to_matter_or_all_zero_stay_dense():
    """A 4-output head (a detector's box regressor) is a sliver of the model's cost: decomposing it
    at rank 1 buys nothing and costs accuracy; an all-zero head (a zero-initialised classifier) has
    nothing to approximate. Both stay dense with the reason, unless asked for (min_share=0, or a
    dict config naming the layer); a budget allocates over the other layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4))
    zero = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 8 * 8, 10))
    nn.init.zeros_(zero[2].weight)
    x = torch.randn(1, 3, 8, 8)
    total = fc.count(model, x).macs
    rows = {r.name: r for r in fc.plan(model, fc.SVD(0.5), example_input=x).rows}
    assert rows["6"].skipped == (f"too small to matter: 256 of the model's {total:,} MACs "
                                 f"({256 / total:.3%}), below min_share 0.002")
    assert fc.plan(model, fc.SVD(0.5), example_input=x, min_share=0).rows[-1].decomposed
    assert fc.plan(model, {"6": fc.SVD(0.5)}, example_input=x).rows[-1].decomposed  # named: the user's call
    assert fc.plan(model, fc.SVD(0.5), example_input=x, min_share=0.01).rows[-1].skipped.endswith("min_share 0.01")
    budget = fc.plan(model, [fc.Tucker2(fc.Budget(macs=0.5)), fc.SVD(fc.Budget(macs=0.5))], example_input=x)
    assert budget.budgets[0].layers == 2 and "too small" in budget.rows[-1].skipped
    head = fc.plan(zero, fc.SVD(0.5), example_input=x, min_share=0).rows[-1]
    assert head.skipped == "its weight is all zero (e.g. a zero-initialised head): nothing to approximate"
    with pytest.raises(ValueError, match=r"min_share must be a share of the model's cost in \[0, 1\), got 1.5"):
        fc.plan(model, fc.SVD(0.5), example_input=x, min_share=1.5)
