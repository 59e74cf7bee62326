"""fc.ADMM (Yin et al. 2021; docs/math.md, "Low-rank ADMM training"): Z has the target ranks, the penalty and its
gradient, the dual update, decompose_ at Z's ranks, state_dict round trip, bad input.

Z's ranks are checked for every registered method and every method list that covers the test net
(``tests.cases``); ADMM's own mechanics (penalty, update, state, decomposition) do not depend on the
method and use Tucker-2 and SVD as the example."""
import io
import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import factorch as fc
from factorch.decompositions.tt import interleave
from factorch.layers.tt_conv import kernel_to_chain, tt_conv_shapes
from factorch.layers.tt_linear import tt_linear_shapes
from tests import cases
from tests.conftest import needs_gloo, torchrun


def _net(dtype=torch.float32):
    """Two 3x3 convs (Tucker-2, CP, TT) and two linears (SVD, TT); channel counts factor well."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)
                         ).to(dtype)


def _rank(matrix):
    return int(torch.linalg.matrix_rank(matrix.double(), rtol=1e-5))


def _tucker2_ranks(z, method):  # (N, C, kh, kw): mode-0 and mode-1 unfoldings
    return (_rank(z.flatten(1)), _rank(z.transpose(0, 1).flatten(1)))


def _tucker3_ranks(z, method):  # and the flattened spatial mode (kh kw)
    return _tucker2_ranks(z, method) + (_rank(z.flatten(2).permute(2, 0, 1).flatten(1)),)


def _svd_ranks(z, method):      # (N, C)
    return (_rank(z),)


def _chain_ranks(t):            # TT-ranks are the ranks of the sequential unfoldings
    return tuple(_rank(t.reshape(math.prod(t.shape[:k]), -1)) for k in range(1, t.dim()))


def _tt_ranks(z, method):
    if z.dim() == 2:            # TT-matrix over (m_k n_k) modes (TTLinear's default shapes)
        n_s, m_s = tt_linear_shapes(z.shape[1], z.shape[0])
        return _chain_ranks(interleave(z.double(), m_s, n_s))
    c_s, n_s = tt_conv_shapes(z.shape[1], z.shape[0])
    return _chain_ranks(kernel_to_chain(z.double(), c_s, n_s, method.conv_order))


RANKS_OF = {"tucker2": _tucker2_ranks, "tucker3": _tucker3_ranks, "svd": _svd_ranks, "tt": _tt_ranks}


def _z_configs():
    """Every registered method alone and every method list that covers the net, at int ranks (a
    ceiling per mode), and fractions and a tuple rank (one per mode) with Tucker-2 and SVD."""
    # int ranks for every method: a fraction can give Tucker-3 ranks like (5, 1, 4), an out rank
    # above in x spatial that no tensor's unfoldings have
    alone = [pytest.param(cases.with_rank(m, 3), id=cases.label(m)) for m in cases.METHODS]
    lists = [pytest.param(ms, id=cases.label(ms)) for ms in cases.method_lists(_net().children(), rank=4)
             if len(ms) > 1]
    return alone + lists + [pytest.param([fc.Tucker2(0.3), fc.SVD(0.3)], id="tucker2+svd-fraction"),
                            pytest.param([fc.Tucker2((5, 3)), fc.SVD(4)], id="tucker2(5,3)+svd")]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("methods", _z_configs())
def test_z_has_exactly_the_target_ranks(methods):
    """Z's unfoldings have exactly the ranks fixed at construction, also after W moved and U grew
    (CP: a rank-R CP tensor, whose unfoldings have rank at most R)."""
    model = _net()
    admm = fc.ADMM(model, methods)
    plan = fc.plan(_net(), methods)  # same weights: the ranks are the plan's
    assert admm.ranks == {r.name: r.ranks for r in plan.decomposed} and admm.ranks
    for step in range(3):
        if step:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.3 * torch.randn_like(p))
            admm.update()
        for name, layer in admm._layers.items():
            z = layer.z
            assert z.shape == layer.weight.shape and z.dtype == layer.weight.dtype
            if layer.method.name == "cp":
                (r,) = admm.ranks[name]
                assert max(_tucker2_ranks(z, layer.method)) <= r, name
                continue
            assert layer.method.name in RANKS_OF, f"how to read Z's ranks under {layer.method.name!r}?"
            assert RANKS_OF[layer.method.name](z, layer.method) == admm.ranks[name], name


def test_penalty_and_its_gradient():
    """penalty = rho/2 sum ||W - Z + U||^2 and d penalty / dW = rho (W - Z + U), in float64."""
    model = _net(torch.float64)
    admm = fc.ADMM(model, [fc.Tucker2(0.3), fc.SVD(0.3)], rho=0.02)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    admm.update()  # U = W - Z != 0
    layers = admm._layers.values()
    assert all(layer.u.abs().max() > 0 for layer in layers)
    penalty = admm.penalty()
    expected = 0.01 * sum(float((l.weight - l.z + l.u).detach().square().sum()) for l in layers)
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-12)
    penalty.backward()
    for layer in layers:
        assert torch.allclose(layer.weight.grad, 0.02 * (layer.weight - layer.z + layer.u), rtol=0, atol=1e-12)
    untouched = [p for n, p in model.named_parameters() if n.endswith("bias")]
    assert all(p.grad is None for p in untouched)


def test_update_is_z_step_then_u_step_and_rho_growth_rescales_u():
    model = _net(torch.float64)
    admm = fc.ADMM(model, fc.SVD(4), rho=0.01, rho_growth=2.0)
    layer = admm._layers["6"]
    assert torch.equal(layer.u, torch.zeros_like(layer.u))  # U = 0 at the start, Z = P(W)
    w0 = layer.weight.detach().clone()
    u, s, vh = torch.linalg.svd(w0)
    assert torch.allclose(layer.z, u[:, :4] @ torch.diag(s[:4]) @ vh[:4], atol=1e-12)  # Eckart-Young
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(w0))
    w1, u_before = layer.weight.detach().clone(), layer.u.clone()
    admm.update()
    u, s, vh = torch.linalg.svd(w1 + u_before)
    z = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
    assert torch.allclose(layer.z, z, atol=1e-12)
    assert admm.rho == pytest.approx(0.02)
    assert torch.allclose(layer.u, (u_before + w1 - z) / 2.0, atol=1e-12)  # scaled dual y / rho, y unchanged


def test_distance_falls_in_a_plain_pytorch_loop():
    """The ``factorch.admm`` docstring's loop, on a small MLP and a learnable task: ||W - Z|| / ||W||
    falls towards 0."""
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 10)).argmax(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    admm = fc.ADMM(model, fc.SVD(3), rho=0.5)
    distances = []
    for epoch in range(15):
        admm.update()
        for i in range(0, 512, 32):
            loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32]) + admm.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        distances.append(admm.distance())
    means = [d["mean"] for d in distances]
    assert set(distances[-1]) == {"mean", "0", "2"}
    assert all(b < a for a, b in zip(means, means[1:])) and means[-1] < means[0] / 10, means
    report = admm.decompose_()  # W is close to rank 3 now: decomposing it loses little
    assert [(r.name, r.ranks) for r in report.decomposed] == [("0", (3,)), ("2", (3,))]
    assert all(r.error < 2 * distances[-1][r.name] for r in report.decomposed)


def test_decompose_decomposes_w_at_exactly_zs_ranks():
    model = _net()
    admm = fc.ADMM(model, [fc.Tucker2(0.3), fc.SVD(0.3)], filter_fn=lambda m, name: name != "0")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    admm.update()
    ranks = admm.ranks
    reference = _net()
    reference.load_state_dict(model.state_dict())
    report = admm.decompose_()
    assert {r.name: r.ranks for r in report.decomposed} == ranks == {"2": ranks["2"], "6": ranks["6"], "8": ranks["8"]}
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[2], fc.layers.TuckerConv2d)
    # W (not Z): the same as decomposing the trained weights directly at those ranks
    fc.decompose_(reference, {"2": fc.Tucker2(ranks["2"]), "6": fc.SVD(ranks["6"][0]), "8": fc.SVD(ranks["8"][0])})
    x = torch.randn(3, 4, 8, 8)
    assert torch.allclose(model(x), reference(x), atol=1e-6)
    with pytest.raises(ValueError, match="decomposed already"):
        admm.update()


def test_state_dict_round_trip_resumes_identically():
    model = _net()
    admm = fc.ADMM(model, [fc.Tucker2(0.3), fc.SVD(0.3)], rho=0.01, rho_growth=1.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    admm.update()
    buf = io.BytesIO()
    torch.save(admm.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)  # plain data
    twin_model = _net()
    twin_model.load_state_dict(model.state_dict())
    twin = fc.ADMM(twin_model, [fc.Tucker2(0.9), fc.SVD(0.9)], rho_growth=1.5)  # other ranks: refused unless asked
    with pytest.raises(ValueError, match="keep_saved_ranks"):
        twin.load_state_dict(state)
    twin.load_state_dict(state, keep_saved_ranks=True)
    assert twin.ranks == admm.ranks and twin.rho == admm.rho == pytest.approx(0.015)
    admm.update()
    twin.update()
    for name in admm.ranks:
        a, b = admm._layers[name], twin._layers[name]
        assert torch.equal(a.z, b.z) and torch.equal(a.u, b.u)
    assert torch.equal(admm.penalty(), twin.penalty())


def test_budget_ranks_resolved_once_with_example_input():
    model = _net()
    x = torch.zeros(1, 4, 8, 8)
    admm = fc.ADMM(model, fc.Tucker2(fc.Budget(macs=0.5)), example_input=x)
    assert admm.ranks == {r.name: r.ranks for r in fc.plan(_net(), fc.Tucker2(fc.Budget(macs=0.5)),
                                                          example_input=x).decomposed}
    with pytest.raises(ValueError, match="needs example_input"):
        fc.ADMM(model, fc.Tucker2(fc.Budget(macs=0.5)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(rho=0.0), "rho must be a positive number, got 0.0"),
    (dict(rho=-1e-3), "rho must be a positive number"),
    (dict(rho=float("nan")), "rho must be a positive number"),
    (dict(rho_growth=0.5), "rho growth must be a number >= 1"),
    (dict(methods=fc.CP(3), filter_fn=lambda m, n: n == "6"), r"handles no layer of Sequential \(6: CP does not handle Linear"),
    (dict(methods="tucker2"), "takes a method config"),
])
def test_bad_input_is_one_clear_error(kwargs, match):
    kwargs = {"methods": fc.Tucker2(0.3), **kwargs}
    with pytest.raises(ValueError, match=match):
        fc.ADMM(_net(), **kwargs)


def test_bad_state_is_refused_and_changes_nothing():
    admm = fc.ADMM(_net(), fc.SVD(3))
    state = admm.state_dict()
    before = {n: (l.z.clone(), l.u.clone()) for n, l in admm._layers.items()}
    bad = {**state, "layers": {**state["layers"], "6": {**state["layers"]["6"], "z": torch.zeros(3, 3)}}}
    with pytest.raises(ValueError, match=r"layer '6': Z and U must have the weight's shape \(48, 64\)"):
        admm.load_state_dict(bad)
    with pytest.raises(ValueError, match="layer 'nope'"):
        admm.load_state_dict({**state, "layers": {"nope": state["layers"]["6"]}})
    with pytest.raises(ValueError, match="rho must be a positive number"):
        admm.load_state_dict({**state, "rho": -1})
    other = fc.ADMM(_net(), fc.SVD(2)).state_dict()  # the same layers at other ranks: not taken silently
    with pytest.raises(ValueError, match=r"the state constrains layer '6' to \('svd', \(2,\)\) \(method, ranks\); "
                                         r"this ADMM to \('svd', \(3,\)\)"):
        admm.load_state_dict(other)
    assert all(torch.equal(l.z, before[n][0]) and torch.equal(l.u, before[n][1]) for n, l in admm._layers.items())
    admm.load_state_dict(other, keep_saved_ranks=True)  # asked for: the saved ranks replace the built ones
    assert admm.ranks["6"] == (2,)


def test_update_on_diverged_weights_names_the_layer():
    model = _net()
    admm = fc.ADMM(model, fc.SVD(3))
    with torch.no_grad():
        model[6].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="fc.ADMM: layer '6' has NaN or Inf values in its weight"):
        admm.update()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_state_lives_on_the_weights_device():
    model = _net().cuda()
    admm = fc.ADMM(model, [fc.Tucker2(0.3), fc.SVD(0.3), fc.TT(3)])
    admm.update()
    assert all(l.z.is_cuda and l.u.is_cuda for l in admm._layers.values())
    admm.penalty().backward()
    assert admm.decompose_().decomposed


# ---- under DDP (Gloo, 2 CPU processes under torchrun): rank 0 decides the ranks, Z, U and the
# decomposition; every rank holds the same Z, U and weights

METHODS = "[fc.Tucker2(fc.Energy(0.6)), fc.SVD(fc.Energy(0.6))]"
DDP_WORKER = textwrap.dedent(f'''
    import sys, torch, torch.nn.functional as F, factorch as fc
    from factorch.distributed import Distributed
    dist = Distributed.from_env("cpu")
    torch.manual_seed(0)
    model = fc.models.create("lenet5", num_classes=10, in_channels=1)
    if dist.rank == 1:  # other weights on rank 1: a rank-2 fc1 (the Energy rule would give it rank <= 2)
        with torch.no_grad():
            model.fc1.weight.copy_(torch.randn(120, 2) @ torch.randn(2, 400))
    admm = fc.ADMM(model, {METHODS}, rho=0.05)
    net = torch.nn.parallel.DistributedDataParallel(model)  # rank 0's weights everywhere from here
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1 + dist.rank)  # each rank its own data
    for epoch in range(2):
        admm.update()
        for _ in range(4):
            x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
            loss = F.cross_entropy(net(x), y) + admm.penalty()
            opt.zero_grad(); loss.backward(); opt.step()
    trained = {{"state": {{k: v.clone() for k, v in model.state_dict().items()}}, "admm": admm.state_dict(),
               "ranks": admm.ranks, "distance": admm.distance()}}
    if dist.rank == 1:  # rank 1's constrained weights drift: the update and the decomposition are still rank 0's
        with torch.no_grad():
            for name in admm.ranks:
                w = model.get_submodule(name).weight
                w.add_(0.01 * torch.randn_like(w))
    admm.update()
    drifted = admm.state_dict()
    report = admm.decompose_()
    torch.save({{"trained": trained, "drifted": drifted, "final": model.state_dict(),
                "decomposed": [(r.name, r.ranks) for r in report.decomposed]}}, f"{{sys.argv[1]}}/rank{{dist.rank}}.pt")
    dist.close()
''')


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@needs_gloo
def test_ddp_z_u_and_weights_identical_on_both_ranks(tmp_path):
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    proc = torchrun([str(tmp_path / "worker.py"), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.manual_seed(0)
    local = fc.ADMM(fc.models.create("lenet5", num_classes=10, in_channels=1), eval(METHODS))
    assert r0["trained"]["ranks"] == r1["trained"]["ranks"] == local.ranks  # rank 0's ranks, not rank 1's
    assert local.ranks["fc1"][0] > 2
    for key in ("trained", "drifted", "final", "decomposed"):
        assert _equal(r0[key], r1[key]), key
    z, u = r0["drifted"]["layers"]["fc1"]["z"], r0["drifted"]["layers"]["fc1"]["u"]
    assert u.abs().max() > 0 and torch.linalg.matrix_rank(z.double(), rtol=1e-5) == local.ranks["fc1"][0]
    assert [n for n, _ in r0["decomposed"]] == ["conv2", "fc1", "fc2", "fc3"]
