"""Every registered factorized layer class and method, through one set of tests (parametrized from
the method registry, ``tests.cases``): equivalence with the dense layer rebuilt from the factors
over the geometry grid of every conv dimensionality, plain and transposed (fp64, 1e-10), full rank
reproduces the layer, exact low rank is recovered,
gradients reach every factor, ``to_dense`` after training, save/load, dtype, and the from-scratch
init's variance. A new method is covered as soon as it is registered."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import factorch as fc
from factorch.layers import CPConv2d
from factorch.rank import resolve
from factorch.registry import Candidate, candidate
from tests.cases import METHODS, layer_classes, pairs
from tests.conftest import conv_reference

KERNELS = [1, 3, 5, (1, 7)]
STRIDES = [1, 2, (2, 1)]
PADDINGS = [0, 1, 2, (1, 0), "same"]
DILATIONS = [1, 2]
GROUPS = [1, 4]
BIASES = [True, False]
GRID = [g for g in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS, GROUPS, BIASES)
        if not (g[2] == "same" and g[1] != 1)]  # PyTorch refuses 'same' with stride > 1
C_IN, C_OUT = 8, 12
pytestmark = pytest.mark.usefixtures("one_thread")
# CP-ALS finds no exact CP at the generic maximal rank: its exactness is the exact-rank recovery test
EXACT_AT_FULL_RANK = [p for p in pairs() if candidate(p.values[0], p.values[1]()).layer_cls is not CPConv2d]


def _random_layer(found: Candidate, dense: nn.Module, rank=2) -> nn.Module:
    """``found``'s layer with ``dense``'s structure, ranks ``rank`` (an int: capped per mode),
    random factors and bias in float64: not a decomposition."""
    layer = found.layer_cls.empty_like(dense, rank, **found.options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return layer


def _conv_classes(dense: nn.Conv2d):
    return [(m, c) for m in METHODS if isinstance(c := candidate(m, dense), Candidate)]


def _check_conv(layer, x):
    ref = conv_reference(x, layer.dense_weight(), layer.config, layer.dense_bias())
    out = layer(x)
    assert out.shape == ref.shape
    tol = 1e-10 * max(ref.abs().max().item(), 1.0)
    assert (out - ref).abs().max().item() <= tol, type(layer).__name__
    assert (layer.to_dense()(x) - out).abs().max().item() <= tol, type(layer).__name__


def test_the_grid_covers_every_conv_class():
    covered = {c.layer_cls for g in GRID for _, c in _conv_classes(nn.Conv2d(C_IN, C_OUT, *g[:1], groups=g[4]))}
    assert covered == {cls for cls in layer_classes() if issubclass(cls, fc.layers.base.FactorizedConv)}


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,bias", GRID)
def test_every_factorized_conv_equals_the_conv_with_its_rebuilt_kernel(kernel, stride, padding, dilation, groups,
                                                                       bias):
    dense = nn.Conv2d(C_IN, C_OUT, kernel, stride, padding, dilation, groups, bias)
    x = torch.randn(3, C_IN, 13, 15, dtype=torch.float64)
    for _, found in _conv_classes(dense):
        _check_conv(_random_layer(found, dense), x)


# the grid's geometry over Conv1d, Conv3d and ConvTranspose1d/2d/3d: (dims, transposed, kernel, stride,
# padding, dilation, groups, output_padding); 'same' only where PyTorch takes it (stride 1, not transposed)
ND_GRID = [
    (1, False, 3, 1, 1, 1, 1, 0), (1, False, 4, 2, 0, 2, 4, 0), (1, False, 5, 1, "same", 2, 1, 0),
    (1, False, 1, 3, 2, 1, 4, 0), (3, False, 3, (1, 2, 2), 1, 1, 1, 0), (3, False, (1, 3, 2), 1, "same", 1, 4, 0),
    (3, False, 2, 2, (1, 0, 1), (2, 1, 1), 1, 0), (3, False, 1, 2, 1, 1, 1, 0),
    (1, True, 4, 2, 1, 1, 1, 0), (1, True, 3, 3, 0, 1, 4, 2), (1, True, 1, 2, 0, 1, 1, 1),
    (2, True, 3, 2, 1, 1, 1, 1), (2, True, (2, 3), (2, 1), (0, 1), 1, 4, (1, 0)), (2, True, 3, 1, 2, 2, 1, 0),
    (2, True, 1, 2, 0, 1, 4, 1), (3, True, 2, 2, 0, 1, 1, 0), (3, True, 3, (1, 2, 2), 1, 1, 4, (0, 1, 1)),
]


def _nd_conv(dims, transposed, kernel, stride, padding, dilation, groups, output_padding, bias=True):
    if transposed:
        return fc.layers.conv_spec.CONV_TYPES[(True, dims)](C_IN, C_OUT, kernel, stride, padding, output_padding,
                                                            groups, bias, dilation)
    return fc.layers.conv_spec.CONV_TYPES[(False, dims)](C_IN, C_OUT, kernel, stride, padding, dilation, groups, bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("geometry", ND_GRID, ids=lambda g: f"{'convT' if g[1] else 'conv'}{g[0]}d-" +
                         "-".join(map(str, g[2:])))
def test_every_factorized_conv_of_any_dimensionality_equals_the_conv_with_its_rebuilt_kernel(geometry, bias):
    dense = _nd_conv(*geometry, bias=bias)
    x = torch.randn(2, C_IN, *(7, 6, 5)[:geometry[0]], dtype=torch.float64)
    classes = _conv_classes(dense)
    assert classes, "no method handles this conv"
    for _, found in classes:
        _check_conv(_random_layer(found, dense), x)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding,stride", [(1, 1), ((2, 1), (2, 1)), ("same", 1)])
def test_padding_modes(padding_mode, padding, stride):
    dense = nn.Conv2d(C_IN, C_OUT, 3, stride, padding, padding_mode=padding_mode)
    x = torch.randn(2, C_IN, 9, 11, dtype=torch.float64)
    classes = _conv_classes(dense)
    assert len(classes) >= 4
    for _, found in classes:
        _check_conv(_random_layer(found, dense, rank=3), x)


@pytest.mark.parametrize("dense", [nn.Conv1d(C_IN, C_OUT, 3, padding=2), nn.Conv2d(C_IN, C_OUT, 3, padding=2),
                                   nn.Conv3d(C_IN, C_OUT, 3, padding=2),
                                   nn.ConvTranspose1d(C_IN, C_OUT, 3, stride=2, output_padding=1),
                                   nn.ConvTranspose2d(C_IN, C_OUT, 3, stride=2, output_padding=1),
                                   nn.ConvTranspose3d(C_IN, C_OUT, 3, stride=2, output_padding=1)],
                         ids=lambda m: type(m).__name__)
def test_border_pixels_with_bias(dense):
    """A bias anywhere but after the last factor makes border pixels wrong; check them explicitly:
    the 2-pixel frame a zero-padded conv reads padding in, and a transposed conv's frame (its
    output_padding row receives the bias only)."""
    d = len(dense.kernel_size)
    x = torch.randn(2, C_IN, *(9, 8, 7)[:d], dtype=torch.float64)
    for _, found in _conv_classes(dense):
        layer = _random_layer(found, dense, rank=4)
        ref = conv_reference(x, layer.dense_weight(), layer.config, layer.dense_bias())
        border = torch.ones_like(ref, dtype=torch.bool)
        border[(..., *(slice(2, -2),) * d)] = False
        assert (layer(x) - ref)[border].abs().max() < 1e-10, type(layer).__name__


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_every_factorized_linear_equals_the_linear_with_its_rebuilt_weight(lead):
    for bias in (True, False):
        dense = nn.Linear(24, 30, bias=bias)
        x = torch.randn(*lead, 24, dtype=torch.float64)
        for method in METHODS:
            found = candidate(method, dense)
            if isinstance(found, Candidate):
                layer = _random_layer(found, dense, rank=3)
                ref = F.linear(x, layer.dense_weight(), layer.to_dense().bias)
                assert (layer(x) - ref).abs().max() < 1e-10 * max(ref.abs().max().item(), 1.0)


def _x(dense, shape, batch=2):
    return torch.randn(batch, *shape, dtype=torch.float64)


@pytest.mark.parametrize("method,make,shape", EXACT_AT_FULL_RANK)
def test_full_rank_reproduces_the_dense_layer(method, make, shape):
    dense = make().double()
    found = candidate(method, dense)
    layer = found.layer_cls.from_dense(dense, found.space(dense).full, **found.options, **found.kwargs)
    x = _x(dense, shape)
    assert (layer(x) - dense(x)).abs().max() < 1e-10
    assert (layer.dense_weight().reshape(dense.weight.shape) - dense.weight).abs().max() < 1e-10


@pytest.mark.parametrize("method,make,shape", pairs())
def test_an_exactly_low_rank_layer_is_recovered(method, make, shape):
    """Rebuild a dense layer from random factors at ranks r; decomposing it at r gives it back."""
    torch.manual_seed(1)
    dense = make()
    found = candidate(method, dense)
    source = _random_layer(found, dense)
    target = source.to_dense()
    kwargs = {**found.kwargs, **({"restarts": 3} if "restarts" in found.kwargs else {})}
    layer = found.layer_cls.from_dense(target, source.ranks, **found.options, **kwargs)
    w = target.weight.detach()
    err = float((layer.dense_weight().reshape(w.shape) - w).norm() / w.norm())
    assert err < (1e-6 if found.layer_cls is CPConv2d else 1e-9)  # ALS converges to ~1e-8, the SVDs exactly


@pytest.mark.parametrize("method,make,shape", pairs())
def test_gradients_reach_every_factor_and_to_dense_is_lossless_after_training(method, make, shape):
    torch.manual_seed(0)
    dense = make().double()
    found = candidate(method, dense)
    layer = found.layer_cls.from_dense(dense, resolve(2, found.space(dense)).ranks, **found.options, **found.kwargs)
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(3):  # pretend to train: factors no longer orthogonal/balanced
        loss = (layer(_x(dense, shape)) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    rebuilt = layer.to_dense()
    assert type(rebuilt) is type(dense)
    x = _x(dense, shape, batch=3)
    assert (rebuilt(x) - layer(x)).abs().max() < 1e-10


@pytest.mark.parametrize("method,make,shape", pairs())
def test_save_and_load_rebuild_every_layer(method, make, shape, tmp_path):
    torch.manual_seed(0)
    dense = make()
    found = candidate(method, dense)
    model = nn.Sequential(found.layer_cls.from_dense(dense, resolve(3, found.space(dense)).ranks, **found.options,
                                                     **found.kwargs))
    fc.save(model, tmp_path / "m.pt")
    loaded = fc.load(tmp_path / "m.pt", model=nn.Sequential(make()))
    assert type(loaded[0]) is type(model[0]) and loaded[0].ranks == model[0].ranks
    x = torch.randn(2, *shape)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("method,make,shape", pairs())
def test_from_dense_keeps_dtype_and_device(method, make, shape):
    for dtype in (torch.float32, torch.bfloat16):
        dense = make().to(dtype)
        found = candidate(method, dense)
        layer = found.layer_cls.from_dense(dense, 2, **found.options, **found.kwargs)
        assert all(p.dtype == dtype and p.device == dense.weight.device for p in layer.parameters())
        assert layer.to_dense().weight.dtype == dtype


BIG = [nn.Conv2d(32, 48, 3, padding=1), nn.Conv2d(32, 48, 1), nn.Linear(256, 128), nn.Conv1d(32, 48, 5),
       nn.Conv1d(32, 48, 1), nn.Conv3d(16, 24, 3), nn.Conv3d(16, 24, 1), nn.ConvTranspose1d(48, 32, 4, stride=2),
       nn.ConvTranspose2d(48, 32, 3, stride=2), nn.ConvTranspose2d(48, 32, 1, stride=2),
       nn.ConvTranspose3d(24, 16, 2, stride=2)]


def _geometry(dense: nn.Module) -> str:
    if isinstance(dense, nn.Linear):
        return "linear"
    return f"{'convT' if dense.transposed else 'conv'}{len(dense.kernel_size)}d"


def _first_handled():
    """Per factorized layer class (and structure option) and layer geometry (linear, conv1d ..
    convT3d), the first of ``BIG`` it handles."""
    out = {}
    for method in METHODS:
        for dense in BIG:
            found = candidate(method, dense)
            if isinstance(found, Candidate):
                key = (found.layer_cls, tuple(found.options.items()), _geometry(dense))
                out.setdefault(key, (method, dense, found))
    return [pytest.param(*v, id=f"{k[0].__name__}-{k[2]}{'-' + str(dict(k[1])) if k[1] else ''}")
            for k, v in out.items()]


@pytest.mark.parametrize("method,dense,found", _first_handled())
def test_from_scratch_kernel_has_the_default_init_variance(method, dense, found):
    """A fresh factorized layer's kernel has ``Var = 1 / (3 fan_in)``, as PyTorch's default init of
    the dense layer (a transposed conv's ``fan_in`` is PyTorch's, ``N/g prod(k)``: its weight is
    ``(C, N/g, *k)``), and its bias the default variance. Fixed seed, 100 draws of a layer large
    enough that each draw averages many products: the estimate lands within 3 % here; the 15 %
    tolerance cannot flake, and a factor of 1.5 in any factor's variance fails it."""
    assert {cls for cls, _, _ in [(p.values[2].layer_cls, 0, 0) for p in _first_handled()]} == \
        layer_classes(attention=False)  # an attention's init: tests/layers/test_attention.py
    torch.manual_seed(0)
    layer = found.layer_cls.empty_like(dense, resolve(0.5, found.space(dense)).ranks, **found.options)
    fan_in = dense.weight[0].numel()
    weights, biases = [], []
    for _ in range(100):
        layer.reset_parameters()
        weights.append(layer.dense_weight().flatten())
        biases.append(layer.to_dense().bias.detach().double())
    w = torch.cat(weights)
    assert abs(float(w.pow(2).mean()) * 3 * fan_in - 1.0) < 0.15
    assert abs(float(w.mean())) < 0.05 / fan_in ** 0.5
    assert abs(float(torch.cat(biases).pow(2).mean()) * 3 * fan_in - 1.0) < 0.15


def _kernel_moves(layer: nn.Module) -> list[float]:
    """How far one gradient step on each factor (not the bias) moves the kernel, on a seeded input."""
    factors = [p for n, p in layer.named_parameters() if not n.endswith("bias")]
    generator = torch.Generator().manual_seed(0)
    x = layer.probe_input(generator)
    y = layer(x)
    grads = torch.autograd.grad((y * torch.randn(y.shape, generator=generator, dtype=y.dtype)).sum(), factors)
    w0, moves = layer.dense_weight(), []
    with torch.no_grad():
        for p, g in zip(factors, grads):
            p.sub_(g)
            moves.append(float((layer.dense_weight() - w0).norm()))
            p.add_(g)
    return moves


@pytest.mark.parametrize("method,dense,found", _first_handled())
def test_from_scratch_factors_are_balanced(method, dense, found):
    """The from-scratch init balances the chain: every factor moves the kernel equally under one
    gradient step, the kernel itself untouched by the balancing, and the global RNG not drawn
    from (a run's data order does not depend on it). Unbalanced, a Tucker chain moves its kernel
    several times faster than SGD moves a dense layer's (benchmarks/from_scratch_stability.py)."""
    torch.manual_seed(0)
    layer = found.layer_cls.empty_like(dense, resolve(0.5, found.space(dense)).ranks, **found.options).double()
    layer.init_factors()
    before, state = layer.dense_weight(), torch.get_rng_state()
    raw = _kernel_moves(layer)
    layer.balance_()
    assert torch.equal(torch.get_rng_state(), state)
    assert float((layer.dense_weight() - before).norm() / before.norm()) < 1e-13  # rounding only
    moves = _kernel_moves(layer)
    assert max(moves) / min(moves) < 1 + 1e-6  # equal, and their sum the least a product allows
    assert sum(moves) <= sum(raw) * (1 + 1e-9)
