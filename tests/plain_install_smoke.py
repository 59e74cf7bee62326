"""Smoke test of a plain install (no extras): every registered method, save/load, and the CLI.

Run by ``make test`` in a second virtual environment holding only ``pip install .`` (and the CPU
torch), as ``python tests/plain_install_smoke.py --installed ENTRY_POINT``; and by
``tests/test_packaging.py`` inside the dev environment with every undeclared distribution
blocked. Not collected by pytest (its name does not start with ``test_``). Exits non-zero with
a traceback on the first failure.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

import factorch as fc
from factorch.cli.main import run
from factorch.layers import FactorizedLayer


def small_model() -> nn.Sequential:
    """A kxk conv, a 1x1 conv and a linear layer: every method handles at least one of them."""
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(4, 16, 3, padding=1)), ("relu", nn.ReLU()), ("pointwise", nn.Conv2d(16, 16, 1)),
        ("pool", nn.AdaptiveAvgPool2d(2)), ("flatten", nn.Flatten()), ("fc", nn.Linear(64, 64)),
    ]))


def check_methods(tmp: Path) -> None:
    x = torch.randn(2, 4, 8, 8)
    for name, method_type in sorted(fc.Method.by_name.items()):
        torch.manual_seed(0)
        model = small_model().eval()
        report = fc.decompose_(model, method_type(rank=2), example_input=x[:1])
        assert report.decomposed, f"{name}: nothing decomposed\n{report}"
        assert any(isinstance(m, FactorizedLayer) for m in model.modules()), name
        y = model(x)
        assert torch.isfinite(y).all(), name
        fc.save(model, tmp / f"{name}.pt")
        loaded = fc.load(tmp / f"{name}.pt", model=small_model()).eval()
        assert torch.equal(loaded(x), y), f"{name}: save/load changed the outputs"
        print(f"method {name}: {len(report.decomposed)} layer(s) decomposed, save/load exact")


def cli(*argv: str, expect: int = 0) -> str:
    """``factorch ARGV`` in this process; its stdout (and stderr), the exit code as expected."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run(list(argv))
        except SystemExit as e:  # argparse's --version/--help
            code = e.code
    assert code == expect, f"factorch {' '.join(argv)} exited {code}: {err.getvalue().strip()}"
    return out.getvalue() + err.getvalue()


def check_cli(tmp: Path) -> None:
    assert cli("--version").strip() == f"factorch {fc.__version__}"
    assert "resnet20" in cli("models")
    for name in sorted(fc.Method.by_name):
        out = tmp / f"lenet5-{name}.pt"
        cli("decompose", "--model", "lenet5", "--in-channels", "1", "--method", name, "--rank", "0.2", "-o", str(out))
        assert out.is_file(), name
        assert "params" in cli("count", str(out), "--total")
        print(f"cli decompose/count --method {name}: ok")
    for form in ("torchscript", "exported-program"):  # export without extras
        assert "outputs match eager" in cli("export", str(out), "--format", form, "-o", str(tmp / f"m.{form}"))
    onnx = cli("export", str(out), "--format", "onnx", "-o", str(tmp / "m.onnx"), expect=2)
    assert "pip install 'factorch[export]'" in onnx and not (tmp / "m.onnx").exists(), onnx
    print("cli export: torchscript and exported-program ok; onnx asks for the [export] extra")


def check_entry_point(executable: str) -> None:
    """The installed console script runs (and imports only what the install brought)."""
    proc = subprocess.run([executable, "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"factorch {fc.__version__}", proc.stderr
    print(f"entry point {executable}: {proc.stdout.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--installed", metavar="ENTRY_POINT",
                        help="check that factorch comes from site-packages and run this console script")
    args = parser.parse_args()
    if args.installed:
        assert "site-packages" in Path(fc.__file__).parts, f"factorch imported from {fc.__file__}, not the install"
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        check_methods(Path(tmp))
        check_cli(Path(tmp))
    if args.installed:
        check_entry_point(args.installed)
    print("plain-install smoke test passed")


if __name__ == "__main__":
    sys.exit(main())
