"""The deploy step on every registered factorized layer class (``tests/cases.py``) followed by a
batch norm: every form it can take (factorized with the BN folded into its last factor, merged,
rebuilt dense) gives the model's outputs, and the BN is folded wherever that is exact."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.deploy.chains import CHAINS, chain_of
from factorch.deploy.pad import padded
from factorch.layers import FactorizedLayer
from factorch.rank import resolve
from factorch.registry import candidate
from tests.cases import one_per_class, pairs
from tests.deploy.clocks import form_of, preferring

pytestmark = pytest.mark.usefixtures("one_thread")


def random_bn(bn):
    """Statistics and affine parameters far from the identity, so a missed fold shows."""
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.3, 3)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    return bn


def layer_then_bn(method, make, shape):
    """(model, input): the layer factorized at rank 2, then a BatchNorm over its output channels."""
    dense = make()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        out = dense(x)
    bn = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[out.dim()](out.shape[1])
    # built directly (not through decompose_, which leaves a layer dense where rank 2 costs more)
    found = candidate(method, dense)
    layer = found.layer_cls.from_dense(dense, resolve(2, found.space(dense)).ranks, **found.options, **found.kwargs)
    return nn.Sequential(layer, random_bn(bn)).eval(), x


def close(a, b):
    return (a - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("form", ["factorized", "merged", "dense"])
@pytest.mark.parametrize("method,make,shape", one_per_class())
def test_every_form_of_every_layer_class_keeps_the_outputs(method, make, shape, form):
    model, x = layer_then_bn(method, make, shape)
    with torch.no_grad():
        expected = model(x)
    layer_cls = type(model[0])
    report = fc.deploy_(model, x[:1], profiler=fc.Profiler(warmup=0, runs=1, timer=preferring(form)))
    with torch.no_grad():
        assert close(model(x), expected)
    (row,) = report.layers
    three_d = expected.dim() == 3  # a linear on (B, L, C): the BatchNorm1d normalises another axis
    foldable = not three_d and (layer_cls.__name__ in CHAINS or row.form == "dense")
    assert isinstance(model[1], nn.Identity) == foldable
    assert (len(report.folded), len(report.kept)) == ((1, 0) if foldable else (0, 1))
    if form == "dense" or row.form == "dense":
        assert not isinstance(model[0], FactorizedLayer) and row.form == "dense"
    elif form == "merged" and "merged" in (row.latency or {}):
        assert row.form == "merged" and isinstance(model[0], nn.Sequential)
    else:
        assert row.form == "factorized" and type(model[0]) is layer_cls


@pytest.mark.parametrize("method,make,shape", one_per_class())
def test_every_chain_padded_to_the_channel_block_keeps_the_outputs(method, make, shape):
    """``pad_to``: a chain's inner channels padded with zero channels (rank 2 -> 4) computes the same;
    every chain of plain or depthwise factors gets the form, the others (transposed, tensor trains) not."""
    model, x = layer_then_bn(method, make, shape)
    with torch.no_grad():
        expected = model(x)
    chain = chain_of(model[0])
    expect = chain is not None and padded([m for _, m in chain], 4) is not None
    report = fc.deploy_(model, x[:1], profiler=fc.Profiler(warmup=0, runs=1, timer=preferring("padded")), pad_to=4)
    with torch.no_grad():
        assert close(model(x), expected)
    (row,) = report.layers
    assert (row.form == "padded") == expect
    if expect:
        inner = [m.out_channels if hasattr(m, "out_channels") else m.out_features for m in list(model[0])[:-1]]
        assert all(c % 4 == 0 for c in inner) and "padded to multiples of 4" in row.runs
        assert row.macs_after > row.macs_factorized  # zero channels cost MACs


def test_pad_to_needs_a_block_and_a_profiler():
    model, x = layer_then_bn(fc.Tucker2(2), lambda: nn.Conv2d(8, 8, 3, padding=1), (8, 6, 6))
    with pytest.raises(ValueError, match="pad_to must be an int >= 2"):
        fc.deploy_(model, x[:1], profiler=fc.Profiler(runs=1), pad_to=1)
    with pytest.raises(ValueError, match="give a profiler too"):
        fc.deploy_(model, x[:1], pad_to=16)
    assert isinstance(model[0], FactorizedLayer) and isinstance(model[1], nn.BatchNorm2d)  # nothing changed


@pytest.mark.parametrize("method,make,shape", one_per_class())
def test_every_layer_class_is_timed_in_onnx_runtime(method, make, shape):
    """``fc.Profiler(runtime="onnxruntime")``: every form of every layer class is exported and timed
    in an ONNX Runtime session; the clock's choice is taken, the outputs kept, the layout left alone."""
    pytest.importorskip("onnxruntime")
    model, x = layer_then_bn(method, make, shape)
    with torch.no_grad():
        expected = model(x)
    timed = []

    def clock(module, run):
        timed.append(form_of(module))
        run()
        return 0.5 if form_of(module) == "dense" else 1.0

    report = fc.deploy_(model, x[:1], profiler=fc.Profiler(warmup=0, runs=1, runtime="onnxruntime", timer=clock))
    with torch.no_grad():
        assert close(model(x), expected)
    (row,) = report.layers
    assert row.form == "dense" and not isinstance(model[0], FactorizedLayer)
    assert report.layout == "contiguous" and {"factorized", "dense"} <= set(timed)


@pytest.mark.parametrize("method,make,shape", pairs())
def test_every_geometry_deploys_without_timing(method, make, shape):
    """Every (method, layer geometry) pair -- 1-D, 2-D, 3-D, transposed, grouped, strided, padded --
    then its batch norm: ``deploy_`` by MACs alone keeps the outputs, and folds the BN wherever
    the layer's output channels are one factor's."""
    model, x = layer_then_bn(method, make, shape)
    with torch.no_grad():
        expected = model(x)
    report = fc.deploy_(model, x[:1])
    with torch.no_grad():
        assert close(model(x), expected)
    # kept factorized, a tensor train spreads its output channels over several cores: no fold
    tensor_train = isinstance(model[0], FactorizedLayer) and type(model[0]).__name__ not in CHAINS
    rows = isinstance(make(), nn.Linear) and expected.dim() == 3  # BatchNorm1d normalises the L axis there
    assert isinstance(model[1], nn.Identity) == (not rows and not tensor_train), report.kept


@pytest.mark.parametrize("method,make,shape", one_per_class())
def test_chains_are_what_each_layer_computes(method, make, shape):
    """``CHAINS`` names each class's factors in the order its forward applies them."""
    model, x = layer_then_bn(method, make, shape)
    chain = chain_of(model[0])
    if chain is None:
        assert type(model[0]).__name__ not in CHAINS
        return
    with torch.no_grad():
        assert close(nn.Sequential(*[m for _, m in chain])(x), model[0](x))


def test_every_chain_class_is_registered():
    assert set(CHAINS) <= set(FactorizedLayer.registry)
