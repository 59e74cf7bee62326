"""Rank specs: validation, fractions (largest feasible ranks), Energy, weakened EVBMF."""
import math

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers import CPConv2d, SVDLinear, TuckerConv2d
from factorch.rank import validate_rank


@pytest.mark.parametrize("spec", [0, -1, 1.5, 0.0, float("nan"), (1, 2, 3), (0, 2), (2.0, 1), "abc", True, None, [2, 2]])
def test_invalid_specs_are_rejected_with_the_value(spec):
    with pytest.raises(ValueError) as e:
        validate_rank(spec, 2)
    assert repr(spec)[:10] in str(e.value) or str(spec) in str(e.value)


def test_tuple_for_single_rank_method_is_rejected():
    with pytest.raises(ValueError, match="CP: this method takes a single rank"):
        fc.CP((2, 2))
    with pytest.raises(ValueError, match="weaken"):
        fc.EVBMF(weaken=1.5)
    with pytest.raises(ValueError, match="threshold"):
        fc.Energy(0)


@pytest.mark.parametrize("frac", [0.05, 0.1, 0.25, 0.5, 0.9])
def test_svd_fraction_is_largest_feasible(frac):
    lin = nn.Linear(96, 64)
    (r,) = SVDLinear.resolve_rank(lin, frac)
    assert r * (96 + 64) <= frac * 96 * 64 < (r + 1) * (96 + 64)


@pytest.mark.parametrize("frac", [0.05, 0.2, 0.5])
def test_cp_and_tucker_fraction_keep_at_most_the_fraction(frac):
    conv = nn.Conv2d(64, 128, 3)
    dense = conv.weight.numel()
    (r,) = CPConv2d.resolve_rank(conv, frac)
    assert r * (64 + 3 + 3 + 128) <= frac * dense < (r + 1) * (64 + 3 + 3 + 128)
    r_out, r_in = TuckerConv2d.resolve_rank(conv, frac)
    params = 64 * r_in + 9 * r_in * r_out + r_out * 128
    assert params <= frac * dense
    assert abs(r_out / r_in - 2.0) < 0.2  # keeps R_out / R_in = N / C
    # one more step along the same ratio would exceed the budget
    rho = r_in / 64 + 2 / 64
    bigger = 64 * math.ceil(rho * 64) + 9 * math.ceil(rho * 64) * math.ceil(rho * 128) + math.ceil(rho * 128) * 128
    assert bigger > frac * dense


def test_energy_rule_per_mode():
    conv = nn.Conv2d(32, 48, 3)
    with torch.no_grad():  # exact Tucker ranks (6, 4): everything past them carries no energy
        core = torch.randn(6, 4, 3, 3)
        conv.weight.copy_(torch.einsum("abij,na,cb->ncij", core, torch.randn(48, 6), torch.randn(32, 4)))
    assert TuckerConv2d.resolve_rank(conv, fc.Energy(1.0)) == (6, 4)
    r_out, r_in = TuckerConv2d.resolve_rank(conv, fc.Energy(0.5))
    assert 1 <= r_out <= 6 and 1 <= r_in <= 4


def test_evbmf_weaken_interpolates_between_evbmf_and_full():
    torch.manual_seed(0)
    lin = nn.Linear(200, 100)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(100, 12) @ torch.randn(12, 200) / 12 ** 0.5 + 0.05 * torch.randn(100, 200))
    (r0,) = SVDLinear.resolve_rank(lin, fc.EVBMF())
    (r1,) = SVDLinear.resolve_rank(lin, fc.EVBMF(weaken=1.0))
    (rh,) = SVDLinear.resolve_rank(lin, fc.EVBMF(weaken=0.5))
    assert r0 == 12 and r1 == 100 and rh == round(12 + 0.5 * (100 - 12))


def test_grouped_rule_takes_max_over_groups():
    conv = nn.Conv2d(8, 8, 3, groups=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:4, :1] = torch.randn(4, 1, 3, 3)  # group 0: input rank 1
        conv.weight[4:, :2] = torch.randn(4, 2, 3, 3)  # group 1: input rank 2
    assert TuckerConv2d.resolve_rank(conv, fc.Energy(1.0))[1] == 2
