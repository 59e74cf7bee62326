"""TTLinear: the contraction equals the dense product (odd/prime shapes, padding, batch dims) in every
order, full rank reproduces nn.Linear, gradients reach every core, count matches the MAC formulas."""
import itertools
import math

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers import TTLinear
from factorch.layers.tt_contract import contract_ltr, contract_rtl, group

ORDERS = ["ltr", "rtl", "dense", "auto"]
SHAPES = [  # (in, out, in_shape, out_shape): odd, prime, padded, unequal, d = 2..4
    (15, 21, (3, 5), (7, 3)),
    (23, 37, (2, 3, 4), (5, 2, 4)),      # primes, both padded (24, 40)
    (60, 7, (3, 4, 5), (7, 1, 1)),
    (97, 101, None, None),               # primes, automatic padded shapes
    (16, 16, (2, 2, 2, 2), (2, 2, 2, 2)),
]


def _random(in_f, out_f, in_shape, out_shape, rank=3, bias=True):
    layer = TTLinear(in_f, out_f, rank, in_shape, out_shape, bias=bias).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return layer


@pytest.mark.parametrize("in_f,out_f,in_shape,out_shape", SHAPES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_contraction_equals_dense_product(in_f, out_f, in_shape, out_shape, order, lead):
    layer = _random(in_f, out_f, in_shape, out_shape)
    layer.order = order
    x = torch.randn(*lead, in_f, dtype=torch.float64)
    w = layer.dense_weight()  # (out, in), rebuilt independently of the forward chain
    assert w.shape == (out_f, in_f)
    ref = x @ w.T + layer.bias.detach()
    out = layer(x)
    assert out.shape == (*lead, out_f)
    assert (out - ref).abs().max() <= 1e-10 * max(ref.abs().max().item(), 1.0)


def test_padding_is_exact_whatever_the_padded_cores_hold():
    """Entries of the cores that only touch padded rows/columns never reach the output."""
    layer = _random(23, 37, (2, 3, 4), (5, 2, 4))
    full = fc.decompositions.tt_matrix_to_matrix([c.detach() for c in layer.cores])  # (40, 24)
    assert full.shape == (40, 24) and full[37:].abs().sum() > 0 and full[:, 23:].abs().sum() > 0
    x = torch.randn(5, 23, dtype=torch.float64)
    for order in ORDERS:
        layer.order = order
        assert (layer(x) - (x @ full[:37, :23].T + layer.bias)).abs().max() < 1e-10


@pytest.mark.parametrize("eps", [0.5, 0.2, 0.05])
def test_from_dense_tolerance_bound(eps):
    lin = nn.Linear(97, 64).double()
    layer = TTLinear.from_dense(lin, fc.Tolerance(eps))  # padded 97 -> 98 = 7 * 7 * 2
    err = float((layer.dense_weight() - lin.weight.detach()).norm() / lin.weight.detach().norm())
    assert err <= eps + 1e-12
    assert layer.padded[1] > 97


def test_orders_agree_and_auto_takes_the_cheapest():
    layer = _random(64, 36, (4, 4, 4), (3, 3, 4), rank=4)
    x = torch.randn(7, 64, dtype=torch.float64)
    outs = []
    for order in ORDERS:
        layer.order = order
        outs.append(layer(x))
    assert (outs[0] - outs[1]).abs().max() < 1e-10 and (outs[0] - outs[2]).abs().max() < 1e-10
    layer.order = "auto"
    for batch in (1, 10, 10 ** 6):
        costs = {o: layer._route_costs[o][0] + batch * layer._route_costs[o][1] for o in ("ltr", "rtl", "dense")}
        assert costs[layer.route(batch)] == min(costs.values())


def _hand_macs(m, n, r, order):
    """docs/math.md, "TT-matrix layers", written out: per example, step k of rtl / ltr."""
    d, r = len(m), (1, *r, 1)
    if order == "rtl":
        return sum(math.prod(n[:k]) * math.prod(m[k + 1:]) * n[k] * r[k + 1] * r[k] * m[k] for k in range(d))
    return sum(math.prod(m[:k]) * math.prod(n[k + 1:]) * r[k] * n[k] * m[k] * r[k + 1] for k in range(d))


def test_count_matches_hand_computed_macs():
    m, n, r = (4, 2, 8), (2, 8, 4), (3, 5)
    layer = TTLinear(64, 64, rank=r, in_shape=n, out_shape=m)
    x = torch.zeros(5, 64)
    # rtl, k = 3, 2, 1: (n1 n2) n3 r3 r2 m3 + n1 (m3) n2 r2 r1 m2 + (m2 m3) n1 r1 r0 m1
    rtl = 2 * 8 * 4 * 1 * 5 * 8 + 2 * 8 * 8 * 5 * 3 * 2 + 2 * 8 * 2 * 3 * 1 * 4
    # ltr, k = 1, 2, 3: (n2 n3) r0 n1 m1 r1 + m1 (n3) r1 n2 m2 r2 + (m1 m2) r2 n3 m3 r3
    ltr = 8 * 4 * 1 * 2 * 4 * 3 + 4 * 4 * 3 * 8 * 2 * 5 + 4 * 2 * 5 * 4 * 8 * 1
    assert (rtl, ltr) == (_hand_macs(m, n, r, "rtl"), _hand_macs(m, n, r, "ltr")) == (6784, 5888)
    for order, per_example in (("rtl", rtl), ("ltr", ltr), ("dense", 64 * 64)):
        layer.order = order
        rows = fc.count(layer, x).layers
        assert len(rows) == 1 and rows[0].macs == per_example + (layer._route_costs["dense"][0] // 5 if order == "dense" else 0)
        assert rows[0].params == sum(p.numel() for p in layer.parameters())
    # building W: step k makes (m_1..m_k) x (n_1..n_k) x r_k from r_{k-1}
    assert layer._route_costs["dense"][0] == 4 * 2 * 1 * 3 + 8 * 16 * 3 * 5 + 64 * 64 * 5 * 1


def test_seed_layer_counts():
    """Novikov et al. 2015's 25088 x 4096 layer (Table 3), TT-ranks 4: cores and MACs from the
    formulas. The plain chains (explicit orders) cost the sums of docs/math.md, "TT-matrix layers";
    at batch 1 ``auto`` first merges the last two cores (7 x 4 inputs, 4 x 4 outputs: 4 * 16 * 28 * 1
    entries from 4 * 4 * 7 * 4 * 4 * 4 MACs) and runs the chain on the merged train, which here even
    costs fewer MACs."""
    layer = TTLinear(25088, 4096, rank=4, in_shape=(2, 7, 8, 8, 7, 4), out_shape=(4,) * 6).to("meta")
    m, n, r = (4,) * 6, (2, 7, 8, 8, 7, 4), (4,) * 5
    assert sum(p.numel() for p in layer.cores) == 4 * 2 * 4 + sum(4 * 4 * c * 4 for c in n[1:5]) + 4 * 4 * 4
    x = torch.zeros(1, 25088, device="meta")
    for order in ("rtl", "ltr"):
        layer.order = order
        assert fc.count(layer, x).macs == _hand_macs(m, n, r, order)
    layer.order = "auto"
    assert layer.plan(1) == ("rtl", (1, 1, 1, 1, 2))
    merged = _hand_macs((4, 4, 4, 4, 16), (2, 7, 8, 8, 28), (4,) * 4, "rtl") + 4 * 4 * 7 * 4 * 4 * 4
    assert fc.count(layer, x).macs == merged < _hand_macs(m, n, r, "rtl") < 25088 * 4096 // 25


def _compositions(d):
    return [tuple(b - a for a, b in zip((0, *cuts), (*cuts, d)))
            for k in range(d) for cuts in itertools.combinations(range(1, d), k)]


@pytest.mark.parametrize("in_f,out_f,in_shape,out_shape", SHAPES[:3])
@pytest.mark.parametrize("batch", [1, 33])
def test_every_plan_equals_the_dense_product(in_f, out_f, in_shape, out_shape, batch):
    """Each merge of neighbouring cores, run in either direction, is the same W."""
    layer = _random(in_f, out_f, in_shape, out_shape)
    cores = [c.detach() for c in layer.cores]
    n_pad, d = math.prod(layer.in_shape), len(layer.in_shape)
    x = torch.randn(batch, n_pad, dtype=torch.float64)
    ref = x @ fc.decompositions.tt_matrix_to_matrix(cores).T  # (B, M')
    for sizes in _compositions(d):
        merged = group(cores, sizes)
        for contract in (contract_rtl, contract_ltr):
            out = contract(x, merged)
            assert (out - ref).abs().max() <= 1e-10 * ref.abs().max(), (sizes, contract.__name__)


@pytest.mark.parametrize("batch", [1, 2, 64, 4096])
def test_auto_plan_output_and_count(batch):
    """Whatever plan ``auto`` takes at a batch size (here the plain chain at 1 and 2, the last two
    cores merged at 64 and 4096), the output is the dense product and the count is the plan's
    MACs: the merge once per call, plus the chain on the merged train per example."""
    layer = _random(1000, 500, None, None, rank=3)
    x = torch.randn(batch, 1000, dtype=torch.float64)
    ref = x @ layer.dense_weight().T + layer.bias.detach()
    assert (layer(x) - ref).abs().max() <= 1e-10 * ref.abs().max()
    how, sizes = layer.plan(batch)
    assert (how, sizes) == ("rtl", (1, 1, 1) if batch < 64 else (1, 2))
    m, n, r = layer.out_shape, layer.in_shape, (1, *layer.ranks, 1)
    bounds = list(itertools.accumulate((0, *sizes)))
    mm = [math.prod(m[a:b]) for a, b in zip(bounds, bounds[1:])]
    nn_ = [math.prod(n[a:b]) for a, b in zip(bounds, bounds[1:])]
    # merging core k + 1 into the super-core of cores a..k: (r_a M N, r_{k+1}) @ (r_{k+1}, m n r_{k+2})
    build = sum(r[a] * math.prod(m[a:k + 1]) * math.prod(n[a:k + 1]) * r[k + 1] * m[k + 1] * n[k + 1] * r[k + 2]
                for a, b in zip(bounds, bounds[1:]) for k in range(a, b - 1))
    layer(x).pow(2).sum().backward()  # gradients reach every core through the merge too
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    # count reports MACs per example: the merge is shared by the batch
    assert fc.count(layer, x).macs == build // batch + _hand_macs(mm, nn_, [r[b] for b in bounds[1:-1]], how)


def test_init_matches_dense_output_variance():
    """Var W_ij = 1/(3N) like nn.Linear, so outputs have the dense layer's variance."""
    torch.manual_seed(0)
    x = torch.randn(256, 1024)
    ratios = []
    with torch.no_grad():
        for _ in range(8):
            tt = TTLinear(1024, 1024, rank=4, bias=False)
            ratios.append(float(tt(x).var() / x.var()))
        expected = float(nn.Linear(1024, 1024, bias=False)(x).var() / x.var())
    assert abs(expected - 1 / 3) < 0.02
    assert abs(sum(ratios) / len(ratios) - 1 / 3) < 0.04


def test_constructor_shapes_and_repr():
    layer = TTLinear(4096, 4096, rank=4)
    assert layer.in_shape == layer.out_shape == (8, 8, 8, 8) and layer.ranks == (4, 4, 4)
    text = repr(TTLinear(1009, 10, rank=2))
    assert "padded=" in text and "ranks=" in text and "in_shape=" in text
    assert TTLinear.empty_like(nn.Linear(100, 100), 0.1).ranks  # a fraction of the dense parameters
    with pytest.raises(ValueError, match="takes int ranks"):
        TTLinear(100, 100, rank=0.1)  # a constructor takes resolved ints


@pytest.mark.parametrize("kwargs,match", [
    (dict(rank=0), ">= 1"),
    (dict(rank=(2, 2, 2, 2)), "bonds"),
    (dict(rank=(999,)), "exceeds"),
    (dict(rank=1.5), "fraction"),
    (dict(rank=fc.Tolerance(0.1)), "needs the layer's weights"),
    (dict(rank=2, in_shape=(2, 3)), "both in_shape and out_shape"),
    (dict(rank=2, in_shape=(2, 3), out_shape=(4, 5, 1)), "same number"),
    (dict(rank=2, in_shape=(2, 2), out_shape=(4, 5)), "multiplies to 4 < 6"),
    (dict(rank=2, in_shape=(2, 0), out_shape=(4, 5)), "ints >= 1"),
    (dict(rank=2, order="fast"), "order"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TTLinear(6, 20, **kwargs)


@pytest.mark.parametrize("in_f,out_f", [(25088, 4096), (1024, 4096), (784, 1024)])
def test_auto_shapes_order_is_the_cheapest_ordering(in_f, out_f):
    """Input factors ascending, output factors descending: no ordering of the same factors has a
    cheaper contraction (either order) at rank 4."""
    import itertools

    layer = TTLinear(in_f, out_f, rank=4)
    n, m = layer.in_shape, layer.out_shape
    assert list(n) == sorted(n) and list(m) == sorted(m, reverse=True)
    best = min(min(_hand_macs(pm, pn, layer.ranks, "rtl"), _hand_macs(pm, pn, layer.ranks, "ltr"))
               for pn in set(itertools.permutations(n)) for pm in set(itertools.permutations(m)))
    assert min(_hand_macs(m, n, layer.ranks, o) for o in ("rtl", "ltr")) == best
