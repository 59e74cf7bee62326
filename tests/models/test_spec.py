"""``--model`` takes the user's own model: ``pkg.module:function``, ``path/to/file.py:function``
(``--model-args``), ``torchvision:NAME`` and ``timm:NAME`` (tested through stand-in packages
installed here: the real packages cannot be installed beside this project's torch); checkpoints
record how their architecture was built, rebuild zoo/torchvision/timm ones and never run the
user's code from a file."""
import sys
import textwrap

import pytest
import torch

import factorch as fc
from factorch.cli.main import run
from factorch.models.spec import ModelSpec, parse_model_args

NET = textwrap.dedent('''
    import torch.nn as nn

    def make_net(width=8, num_classes=10, in_channels=3):
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
''')
# what torchvision.models and timm expose: a registry of names and a builder taking keyword arguments
TORCHVISION = NET + textwrap.dedent('''
    def list_models():
        return ["tinynet", "tinynet_wide"]

    def get_model(name, weights=None, **kwargs):
        assert weights is None, "factorch never asks for downloaded weights"
        if name not in list_models():
            raise ValueError(name)
        return make_net(width=16 if name.endswith("wide") else 8, **kwargs)
''')
TIMM = NET + textwrap.dedent('''
    def list_models():
        return ["tinynet"]

    def create_model(name, pretrained=False, **kwargs):
        assert not pretrained
        return make_net(**kwargs)
''')


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """Stand-in ``torchvision`` and ``timm`` and the user's ``mypkg.models`` on the import path."""
    root = tmp_path / "site"
    for package, text in (("torchvision/models", TORCHVISION), ("timm", TIMM), ("mypkg/models", NET)):
        folder = root / package
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text(text)
        if "/" in package:
            (root / package.split("/")[0] / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm", "mypkg")]:
        monkeypatch.delitem(sys.modules, name)
    yield root
    for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm", "mypkg")]:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("spelling", ["torchvision:tinynet", "timm:tinynet", "mypkg.models:make_net", "FILE:make_net"])
def test_decompose_count_and_reconstruct_any_model(packages, tmp_path, capsys, spelling):
    (tmp_path / "net.py").write_text(NET)
    spelling = spelling.replace("FILE", str(tmp_path / "net.py"))
    small = tmp_path / "small.pt"
    extra = ["--input-shape", "3,16,16"]
    assert run(["decompose", "--model", spelling, "--method", "tucker2,svd", "--rank", "0.5", "--min-share", "0",
                *extra, "-o", str(small)]) == 0
    assert isinstance(fc.load(small, model=ModelSpec.parse(spelling).build())[2], fc.layers.TuckerConv2d)
    capsys.readouterr()
    if spelling.startswith(("torchvision:", "timm:")):  # rebuilt from the file alone
        assert run(["count", str(small)]) == 0
        assert run(["reconstruct", str(small), "-o", str(tmp_path / "dense.pt")]) == 0
        assert fc.load(small).factorch_arch["source"] == spelling.split(":")[0]
    else:  # the user's code is never run because a file names it: one line says what to pass
        assert run(["count", str(small)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"was built by your code ({spelling}); factorch never runs code that a file " \
                                  f"names: pass --model {spelling}" in err[0]
        assert run(["count", str(small), "--model", spelling]) == 0  # CHECKPOINT + --model: its weights
        assert run(["export", str(small), "--model", spelling, "--format", "torchscript",
                    "-o", str(tmp_path / "s.ts")]) == 0


def test_model_args_and_what_a_file_records(packages, tmp_path):
    spec = ModelSpec.parse("mypkg.models:make_net", parse_model_args("width=4,num_classes=5"))
    model = spec.build(in_channels=1)
    assert model[0].weight.shape == (4, 1, 3, 3) and model[-1].out_features == 5
    assert model.factorch_arch == {"source": "code", "name": "mypkg.models:make_net",
                                   "kwargs": {"width": 4, "num_classes": 5, "in_channels": 1}}
    assert parse_model_args('{"width": 4, "deep": true}') == {"width": 4, "deep": True}
    wide = ModelSpec.parse("torchvision:tinynet_wide").build(num_classes=7)
    assert wide[-1].out_features == 7 and wide.factorch_arch["kwargs"] == {"num_classes": 7}
    path = tmp_path / "wide.pt"
    fc.save(wide, path)
    assert torch.equal(fc.load(path)[0].weight, wide[0].weight)  # rebuilt by torchvision's builder


@pytest.mark.parametrize("spelling,args,match", [
    ("torchvision:nonet", None, "torchvision has no model 'nonet'"),
    ("mypkg.nowhere:make_net", None, "cannot import 'mypkg.nowhere'"),
    ("mypkg.models:nothing", None, "has no function 'nothing'"),
    ("mypkg.models:make_net", "depth=3", "unexpected keyword argument 'depth'"),
    ("mypkg.models:make_net", "width", "is not key=value"),
    ("mypkg.models:make_net", "{bad json", "is not a JSON object"),
    ("mypkg.models:make-net", None, "after ':' comes the function"),
    ("FILE:make_net", None, "is not a file"),
])
def test_bad_model_spellings_are_one_line(packages, tmp_path, capsys, spelling, args, match):
    spelling = spelling.replace("FILE", str(tmp_path / "missing.py"))
    argv = ["count", "--model", spelling, "--input-shape", "3,16,16"] + (["--model-args", args] if args else [])
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_a_missing_package_is_named(monkeypatch, capsys):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name in ("torchvision", "timm") else
                        __import__("importlib").machinery.PathFinder.find_spec(name))
    for spelling, package in (("torchvision:resnet18", "torchvision"), ("timm:resnet50", "timm")):
        assert run(["count", "--model", spelling]) == 2
        assert f"needs {package}, which is not installed here (pip install {package})" in capsys.readouterr().err


def test_train_takes_a_model_from_a_file(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    out = tmp_path / "run"
    assert run(["train", "--model", f"{tmp_path / 'net.py'}:make_net", "--model-args", "width=4", "--dataset",
                "digits", "--subset", "64", "--epochs", "1", "--batch-size", "32", "--out", str(out)]) == 0
    assert fc.load(out / "model.pt", model=ModelSpec.parse(f"{tmp_path / 'net.py'}:make_net", {"width": 4}).build(
        10, 1))[0].in_channels == 1  # the data set's one channel reached the user's function
