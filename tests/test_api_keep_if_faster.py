"""keep_if_faster: the measured faster form is kept; a fake clock decides (no wall-clock asserts)."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers.base import FactorizedLayer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.b(self.a(x)).mean((2, 3)))


def clock(factorized_seconds, dense_seconds=1.0):
    """Dense layers take ``dense_seconds``, factorized ones ``factorized_seconds`` per call."""
    return lambda module, run: (run(), factorized_seconds if isinstance(module, FactorizedLayer) else dense_seconds)[1]


X = torch.zeros(1, 3, 12, 12)


def test_layer_stays_dense_when_the_factorized_form_is_slower():
    model = Net()
    report = fc.decompose_(model, {"a": fc.Tucker2((8, 2)), "b": fc.Tucker2((8, 8))}, example_input=X,
                           keep_if_faster=fc.Profiler(warmup=0, runs=3, timer=clock(2.0)))
    assert type(model.b) is nn.Conv2d and type(model.a) is nn.Conv2d
    row = {r.name: r for r in report.rows}["b"]
    assert row.kept == "dense" and row.latency_dense == 1.0 and row.latency_factorized == 2.0
    assert row.speedup == pytest.approx(0.5) and "kept dense" in row.skipped and "0.50x" in row.skipped
    assert row.params_after is not None and row.error is not None  # the candidate was still costed
    assert "latency dense -> factorized" in str(report) and "1e+03 ms -> 2e+03 ms" in str(report)


def test_layer_is_factorized_when_faster_and_the_report_says_by_how_much():
    model = Net()
    report = fc.decompose_(model, {"a": fc.Tucker2((8, 2)), "b": fc.Tucker2((8, 8))}, example_input=X,
                           keep_if_faster=fc.Profiler(warmup=0, runs=1, timer=clock(0.25)))
    assert isinstance(model.b, fc.layers.TuckerConv2d)
    row = {r.name: r for r in report.rows}["b"]
    assert row.kept == "factorized" and row.speedup == pytest.approx(4.0)
    assert "kept factorized: 4.00x faster" in str(report)


def test_timed_at_the_real_input_size_and_the_given_batch():
    shapes = []

    def spy(module, run):
        hook = module.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
        run()
        hook.remove()
        return 1.0
    fc.plan(Net(), {"b": fc.Tucker2((8, 8))}, example_input=torch.zeros(5, 3, 12, 12),
            keep_if_faster=fc.Profiler(warmup=0, runs=1, timer=spy))
    assert set(shapes) == {(5, 32, 12, 12)}  # example_input's batch, layer b's input size
    shapes.clear()
    fc.plan(Net(), {"b": fc.Tucker2((8, 8))}, example_input=X,
            keep_if_faster=fc.Profiler(warmup=0, runs=1, batch=7, timer=spy))
    assert set(shapes) == {(7, 32, 12, 12)}


def test_keep_if_faster_needs_example_input_and_a_valid_value():
    with pytest.raises(ValueError, match="example_input"):
        fc.decompose_(Net(), fc.Tucker2(4), keep_if_faster=True)
    with pytest.raises(ValueError, match="keep_if_faster"):
        fc.decompose_(Net(), fc.Tucker2(4), example_input=X, keep_if_faster="yes")


def test_cli_keep_if_faster(tmp_path, capsys):
    from factorch.cli.main import run

    out = tmp_path / "o.pt"
    assert run(["decompose", "--model", "resnet20", "--rank", "0.5", "--exclude", "layer[23].*|fc",
                "--keep-if-faster", "--runs", "1", "--warmup", "0", "--batch", "2", "--threads", "1",
                "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "latency dense -> factorized" in text and out.exists()
    assert run(["decompose", "--model", "resnet20", "--keep-if-faster", "--runs", "0", "-o", str(out)]) == 2
    assert "runs" in capsys.readouterr().err
