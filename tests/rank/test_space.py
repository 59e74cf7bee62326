"""The rank model: every layer class's rank space costs exactly what ``fc.count`` counts on the real
modules, and the one resolver applies one convention to every method."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers import CPConv2d, FactorizedLayer
from factorch.layers.conv_spec import ConvSpec
from factorch.rank import resolve
from factorch.registry import candidate
from tests.cases import attention_pairs, example_input, layer_classes, pairs


def test_every_factorized_layer_class_is_covered():
    assert layer_classes() == set(FactorizedLayer.registry.values())


@pytest.mark.parametrize("method,make,shape", pairs() + attention_pairs())
def test_params_and_macs_equal_fc_count_on_the_real_modules(method, make, shape):
    torch.manual_seed(0)
    dense = make()
    found = candidate(method, dense)
    space = found.space(dense)
    x = example_input(dense, shape)
    counted = fc.count(dense, x)
    assert counted.macs == space.dense_macs(shape)
    assert counted.params == space.dense_params + space.bias
    for spec in (1, 0.3, 0.05, tuple(space.full)):
        ranks = resolve(spec, space).ranks
        layer = found.layer_cls.empty_like(dense, ranks, **found.options)
        assert layer.ranks == ranks
        counted = fc.count(layer, x)
        assert counted.macs == space.macs(ranks, shape), (spec, ranks)
        assert counted.params == space.params(ranks) + space.bias, (spec, ranks)


@pytest.mark.parametrize("method,make,shape", pairs() + attention_pairs())
def test_one_convention_for_every_method(method, make, shape):
    """int: a ceiling, capped per mode with a note; tuple: exact, above full is one error naming the
    mode; fraction: the largest ranks within it, or rank 1 with a note; constructors take ints only."""
    dense = make()
    found = candidate(method, dense)
    space = found.space(dense)
    big = resolve(10 ** 6, space)
    assert big.ranks == space.full and big.capped and "capped at the full ranks" in big.note
    assert resolve(1, space).ranks == (1,) * len(space.modes) and not resolve(1, space).note
    over = tuple(f + 1 if k == 0 else f for k, f in enumerate(space.full))
    with pytest.raises(ValueError, match=f"exceeds the full rank of mode '{space.modes[0].name}'"):
        resolve(over, space)
    with pytest.raises(ValueError, match=r"has \d+ ranks"):
        resolve((1,) * (len(space.modes) + 1), space)
    for f in (0.5, 0.2):
        r = resolve(f, space)
        assert space.params(r.ranks) <= f * space.dense_params or (r.ranks == (1,) * len(r.ranks) and r.note)
    tiny = resolve(1e-6, space)
    assert tiny.ranks == (1,) * len(space.modes) and "below rank 1" in tiny.note
    args = found.layer_cls.dense_args(dense, **found.options)
    for bad in (over, 0.5, fc.Energy(0.9)):
        with pytest.raises(ValueError, match="must be in|takes int ranks"):
            found.layer_cls(**args, rank=bad)


@pytest.mark.parametrize("method,make,shape", pairs() + attention_pairs())
def test_rules_read_each_modes_spectra(method, make, shape):
    """Energy(1.0) keeps every nonzero singular value: on a random layer, each one-unfolding mode
    gets its unfolding's rank (at most the mode's full rank); Tolerance(0) likewise."""
    torch.manual_seed(0)
    dense = make()
    found = candidate(method, dense)
    space = found.space(dense)
    for rule in (fc.Energy(1.0), fc.Tolerance(0.0)):
        ranks = resolve(rule, space).ranks
        assert all(1 <= r <= f for r, f in zip(ranks, space.full))
        if method.name in ("tucker2", "svd", "tucker3"):  # one unfolding per mode: its rank
            assert ranks == tuple(min(f, *space.spectra()[k][0][0].shape) for k, f in enumerate(space.full))


def test_nan_weights_are_one_error_naming_the_layer_for_every_rule():
    conv = nn.Conv2d(8, 8, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    space = fc.layers.TuckerConv2d.rank_space(conv)
    for rule in (fc.EVBMF(), fc.Energy(0.9), fc.Tolerance(0.1)):
        with pytest.raises(ValueError, match="NaN or Inf"):
            resolve(rule, space)


def test_cp_beyond_the_channels_is_passed_over_with_the_reason():
    """``fc.CP(0.5)`` on a 3x3 conv asks for R = 0.5 params / (C + 3 + 3 + N): on 512 channels
    1145, on this 16-channel stand-in 30 -- both above max(N, C), where CP widens the layer and
    ALS takes minutes (512 channels). The next method is used, and the report says why."""
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1))
    row = fc.plan(model, [fc.CP(0.5), fc.Tucker2(0.5)], min_share=0).rows[0]
    assert row.method == "tucker2"
    assert "cp passed over: rank 30 is above 16, the largest worth computing here" in row.note
    assert "CP-ALS would take about" in row.note and "a fraction up to 0.264" in row.note
    alone = fc.plan(model, fc.CP(0.5), min_share=0).rows[0]
    assert alone.skipped.startswith("rank 30 is above 16") and alone.method == "cp"
    within = fc.plan(model, fc.CP(0.25), min_share=0).rows[0]  # R = 15: built
    assert within.method == "cp" and within.ranks == (15,) and not within.skipped


def test_cp_limit_of_a_resnet_conv_and_the_budget_stays_within_it():
    space = CPConv2d.space(ConvSpec.of(nn.Conv2d(512, 512, 3)))
    (rank,) = resolve(0.5, space).ranks
    assert rank == 1145 and space.limit.ranks == (512,)
    assert "CP-ALS would take about" in space.refusal((rank,)) and space.refusal((512,)) is None
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1))
    row = fc.plan(model, fc.CP(fc.Budget(params=0.5)), min_share=0).rows[0]
    assert row.method == "cp" and row.ranks == (16,)  # the budget would buy 30: capped at the limit
