"""Export as a promise: every registered layer type over every conv dimensionality (1-D, 2-D, 3-D,
plain and transposed) and a decomposed ResNet-20, in every format, with a dynamic batch size, give
eager's outputs; anything else is refused before a file exists."""
import contextlib
import importlib.util
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.cli.main import run
from factorch.export import FORMATS, export
from factorch.layers import FactorizedLayer, TTConv2d
from factorch.surgery import walk
from tests.cases import METHODS, with_rank

pytestmark = pytest.mark.usefixtures("one_thread")

NO_ONNX = any(importlib.util.find_spec(name) is None for name in FORMATS["onnx"].needs)
EVERY_FORMAT = [pytest.param(f, marks=pytest.mark.skipif(f == "onnx" and NO_ONNX, reason="pip install 'factorch[export]'"))
                for f in FORMATS]


@contextlib.contextmanager
def one_thread_block():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Tokens(nn.Module):
    """(B, 64) as 4 tokens of 16 through self-attention (padding mask on the last token), back to (B, 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        t = x.reshape(x.shape[0], 4, 16)
        pad = torch.zeros(x.shape[0], 4, dtype=torch.bool, device=x.device)
        pad[:, -1] = True
        return self.attn(t, t, t, key_padding_mask=pad, need_weights=False)[0].reshape(x.shape[0], 64)


# (dims, transposed) -> the example input's spatial size: every conv geometry a layer class takes
GEOMETRIES = {"conv2d": (2, False, (6, 6)), "conv1d": (1, False, (12,)), "conv3d": (3, False, (4, 5, 3)),
              "convT1d": (1, True, (7,)), "convT2d": (2, True, (4, 5)), "convT3d": (3, True, (3, 4, 3))}


def every_layer_model(geometry: str = "conv2d") -> nn.Sequential:
    """A small CNN of ``geometry`` (plain or transposed convs of 1 to 3 dims) in which each
    registered method (and TT's conventional conv order) decomposes its own k3 (transposed: k4) conv,
    pointwise conv, linear layer and attention (where it handles one): every registered layer type,
    once at least, in that geometry."""
    dims, transposed, _ = GEOMETRIES[geometry]  # the convs keep the spatial size
    conv = fc.layers.conv_spec.CONV_TYPES[(transposed, dims)]
    methods = [with_rank(m, 2) for m in METHODS]
    plain = fc.layers.conv_spec.CONV_TYPES[(False, dims)]
    layers = OrderedDict(stem=plain(3, 16, 3, padding=1))
    for i in range(len(methods)):  # transposed: a 2x upsampling (kernel 4, stride 2), then back down
        layers[f"k3_{i}"] = conv(16, 16, 4, stride=2, padding=1) if transposed else conv(16, 16, 3, padding=1)
        layers[f"k1_{i}"] = conv(16, 16, 1)
        if transposed:
            layers[f"down_{i}"] = plain(16, 16, 2, stride=2)
    layers.update(flatten=nn.Flatten(), into=nn.Linear(16 * math.prod(GEOMETRIES[geometry][2]), 64))
    for i in range(len(methods)):
        layers[f"fc_{i}"], layers[f"tok_{i}"] = nn.Linear(64, 64), Tokens()
    layers["head"] = nn.Linear(64, 10)
    torch.manual_seed(0)
    model = nn.Sequential(layers).eval()
    for i, method in enumerate(methods):
        own = {f"k3_{i}", f"k1_{i}", f"fc_{i}", f"tok_{i}.attn"}
        fc.decompose_(model, method, filter_fn=lambda m, name, own=own: name in own,
                      example_input=example(geometry), min_share=0)
    return model


def example(geometry: str, batch: int = 1, fill=torch.zeros) -> torch.Tensor:
    return fill(batch, 3, *GEOMETRIES[geometry][2])


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def layers_model(request):
    with one_thread_block():
        model = every_layer_model(request.param)
    kinds = {type(m) for m in model.modules() if isinstance(m, FactorizedLayer)}
    assert kinds == set(FactorizedLayer.registry.values()), "a registered layer type no method produced"
    assert {m.order for m in model.modules() if isinstance(m, TTConv2d)} == {"efficient", "conventional"}
    dims, transposed, _ = GEOMETRIES[request.param]
    convs = [m.config for m in model.modules() if isinstance(m, fc.layers.base.FactorizedConv)]
    assert {(c.dims, c.transposed) for c in convs} == {(dims, transposed)}
    return request.param, model


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    model = fc.models.create("resnet20").eval()
    with one_thread_block():  # module fixtures run before the one_thread fixture
        fc.decompose_(model, [fc.Tucker2(0.4), fc.SVD(0.5)])
    return model


def _written_file_runs(format, path, model, x):
    """The written file, loaded on its own, at a batch size the export never saw."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    elif format == "torchscript":
        got = torch.jit.load(str(path))(x)
    else:
        got = torch.export.load(str(path)).module()(x)
    with torch.no_grad():
        expected = model(x)
    assert (got - expected).abs().max() <= 1e-6 + 1e-4 * expected.abs().max()


@pytest.mark.parametrize("format", EVERY_FORMAT)
def test_every_layer_type_exports(tmp_path, layers_model, format):
    geometry, model = layers_model
    path = tmp_path / f"layers.{format}"
    result = export(model, example(geometry), format, path)
    assert result.path == path and path.stat().st_size == result.size and result.batches == (1, 3)
    assert result.max_abs_diff <= 1e-6 + 1e-4 * 10
    _written_file_runs(format, path, model, example(geometry, 7, torch.randn))


@pytest.mark.parametrize("format", EVERY_FORMAT)
def test_decomposed_resnet20_exports(tmp_path, resnet20, format):
    path = tmp_path / f"resnet20.{format}"
    result = export(resnet20, torch.zeros(1, 3, 32, 32), format, path)
    assert result.max_rel_diff <= 1e-4
    _written_file_runs(format, path, resnet20, torch.randn(5, 3, 32, 32))
    assert isinstance(resnet20.layer1[0].conv1, fc.layers.TuckerConv2d)  # the caller's model is untouched


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torch_jit_script_takes_every_layer_type(layers_model):
    geometry, model = layers_model
    layers = {}
    for _, m in walk(model):  # the model's own layers, not an attention's factor pairs
        if isinstance(m, FactorizedLayer):
            layers.setdefault(type(m), m)
    conventional = next(m for m in model.modules() if isinstance(m, TTConv2d) and m.order == "conventional")
    for layer in [*layers.values(), conventional]:
        scripted = torch.jit.script(layer)
        if isinstance(layer, fc.layers.SVDMultiheadAttention):
            for batch in (1, 4):
                x = torch.randn(batch, 4, 16)
                for got, want in zip(scripted(x, x, x), layer(x, x, x)):
                    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
            continue
        shape = (64,) if isinstance(layer, (fc.layers.SVDLinear, fc.layers.TTLinear)) else \
            (16, *(5, 7, 4)[:GEOMETRIES[geometry][0]])
        for batch in (1, 4):
            x = torch.randn(batch, *shape)
            assert torch.allclose(scripted(x), layer(x), rtol=1e-5, atol=1e-6), type(layer).__name__


def test_outputs_that_differ_are_refused_and_nothing_is_written(tmp_path, monkeypatch):
    fmt = FORMATS["torchscript"]
    broken = fmt.__class__(fmt.serialize, lambda data, device: (lambda x: fmt.load(data, device)(x) + 1e-2), fmt.needs)
    monkeypatch.setitem(FORMATS, "torchscript", broken)
    path = tmp_path / "m.pt"
    with pytest.raises(ValueError, match=r"torchscript export does not match eager at batch size 1: max abs diff "
                                         r"0\.01.*nothing written"):
        export(nn.Sequential(nn.Linear(4, 3)), torch.zeros(1, 4), "torchscript", path)
    assert not list(tmp_path.iterdir())


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x  # a branch on values: torch.export cannot trace it


@pytest.mark.parametrize("model,example,format,match", [
    (nn.Linear(4, 3), torch.zeros(1, 4), "pickle", "unknown export format 'pickle'; choose from onnx, torchscript"),
    (nn.Linear(4, 3), torch.zeros(1, 4, dtype=torch.int64), "torchscript", "floating-point tensor"),
    (DataDependent(), torch.ones(1, 4), "exported-program", "cannot export DataDependent to exported-program: "),
    (nn.Linear(4, 3), torch.zeros(1, 4), "torchscript", "directory .* does not exist"),
])
def test_bad_requests_are_one_line(tmp_path, model, example, format, match):
    path = tmp_path / ("no/dir/x" if "directory" in match else "x")
    with pytest.raises(ValueError, match=match) as e:
        export(model, example, format, path)
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())


def test_missing_extra_names_the_pip_command(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ValueError, match=r"onnx export needs onnxruntime, not installed here: "
                                         r"pip install 'factorch\[export\]'"):
        export(nn.Linear(4, 3), torch.zeros(1, 4), "onnx", tmp_path / "m.onnx")
    fc.save(fc.models.create("lenet5", in_channels=1), tmp_path / "m.pt")
    assert run(["export", str(tmp_path / "m.pt"), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'factorch[export]'" in err[0] and not (tmp_path / "m.onnx").exists()


def test_cli_export(tmp_path, capsys):
    model = fc.models.create("lenet5", in_channels=1).eval()
    fc.decompose_(model, [fc.TT(rank=4)], filter_fn=lambda m, name: name == "fc1")
    fc.save(model, tmp_path / "m.pt", meta={"input_shape": [1, 28, 28]})
    out = tmp_path / "m.ts"
    assert run(["export", str(tmp_path / "m.pt"), "--format", "torchscript", "--batch", "8", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out} (torchscript") and "batch sizes 1, 9" in printed
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(torch.jit.load(str(out))(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flag,value", [("--atol", "-1"), ("--rtol", "nan"), ("--atol", "inf"), ("--rtol", "-0.1")])
def test_bad_tolerances_are_refused_before_exporting(tmp_path, capsys, flag, value):
    """A tolerance that is negative, NaN or infinite is the user's input, not the export's fault:
    one line naming it, nothing written (an infinite one would silently disable the check)."""
    from factorch.cli.main import run

    out = tmp_path / "m.pt"
    assert run(["export", "--model", "lenet5", "--in-channels", "1", "--format", "torchscript", flag, value,
                "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    name = flag.lstrip("-")
    assert len(err) == 1 and err[0].startswith(f"error: export tolerance {name} must be a finite number >= 0"), err
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_a_two_input_model_is_one_clear_error_in_every_format(tmp_path, fmt):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x, y):
            return self.lin(x) + y

    with pytest.raises(ValueError, match=r"Two does not run on one input shaped like example_input \(1, 4\) "
                                         r"\(.*missing 1 required positional argument: 'y'\); export takes"):
        fc.export(Two(), torch.zeros(1, 4), fmt, tmp_path / "two")
    assert not (tmp_path / "two").exists()
