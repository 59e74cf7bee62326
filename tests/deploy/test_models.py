"""The deploy step on whole models: decomposed ResNet-18 (ImageNet geometry), ResNet-20 and a VGG
with batch norm keep their outputs, every batch norm is folded, and the exported graphs carry none;
the dataflow finds only the pairs it may fold; bad input is one clear error and changes nothing."""
import copy
import functools
import importlib.util

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.export import FORMATS
from tests.deploy.clocks import by_kernels, form_of, preferring
from tests.deploy.test_layers import close, random_bn

pytestmark = pytest.mark.usefixtures("one_thread")
NO_ONNX = any(importlib.util.find_spec(name) is None for name in FORMATS["onnx"].needs)


def decomposed(name, size, **kw):
    """A copy of the zoo model ``name`` with random batch-norm statistics, decomposed at half its
    MACs (Tucker-2 + SVD), and an input of two examples (decomposed once per model)."""
    model, x = _decomposed(name, size, tuple(sorted(kw.items())))
    return copy.deepcopy(model), x.clone()


@functools.lru_cache(maxsize=None)
def _decomposed(name, size, kw):
    kw = dict(kw)
    torch.manual_seed(0)
    model = fc.models.create(name, **kw).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            random_bn(m)
    x = torch.randn(2, 3, size, size)
    fc.decompose_(model, [fc.Tucker2(fc.Budget(macs=0.5)), fc.SVD(fc.Budget(macs=0.5))], example_input=x[:1])
    return model, x


def batch_norms(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("name,size,kw", [("resnet18", 64, {"num_classes": 1000}), ("resnet20", 32, {}),
                                          ("vgg-small", 32, {})])
@pytest.mark.parametrize("clock", ["none", "by_kernels", "dense"])
def test_decomposed_models_keep_their_outputs_with_every_batch_norm_folded(name, size, kw, clock):
    model, x = decomposed(name, size, **kw)
    with torch.no_grad():
        expected = model(x)
    n_bn = len(batch_norms(model))
    profiler = None if clock == "none" else fc.Profiler(warmup=0, runs=1, timer=by_kernels if clock == "by_kernels"
                                                        else preferring("dense"))
    report = fc.deploy_(model, x[:1], profiler=profiler)
    assert not batch_norms(model) and len(report.folded) == n_bn and not report.kept
    assert report.dataflow == "torch.fx" and getattr(model, "factorch_deployed", False)
    with torch.no_grad():
        assert close(model(x), expected)
    forms = report.forms()
    if clock == "dense":
        assert set(forms) == {"dense"} and not any(isinstance(m, fc.layers.FactorizedLayer) for m in model.modules())
    if clock == "by_kernels":  # fewer kernels always win under this clock: merged or dense, never the chain
        assert "factorized" not in forms
    if clock == "none":  # by MACs: merges never cost more
        assert report.macs_after <= report.macs_before
    if clock == "dense":
        assert report.macs_after > report.macs_before


@pytest.mark.skipif(NO_ONNX, reason="pip install 'factorch[export]'")
def test_the_exported_onnx_graph_has_no_batch_norm(tmp_path):
    """(torch's ONNX exporter folds an eval BatchNorm after a conv itself; the exported program
    below keeps it, so there the check can fail.)"""
    import onnx

    model, x = decomposed("resnet20", 32)
    fc.deploy_(model, x[:1])
    fc.export(model, x[:1], "onnx", tmp_path / "deployed.onnx")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "deployed.onnx")).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops


def test_the_exported_program_has_no_batch_norm(tmp_path):
    model, x = decomposed("vgg-small", 32)
    names = lambda m: {str(n.target) for n in torch.export.export(m, (x,)).graph.nodes  # noqa: E731
                       if n.op == "call_function"}
    assert any("batch_norm" in t for t in names(model))
    fc.deploy_(model, x[:1])
    assert not any("batch_norm" in t for t in names(model))
    result = fc.export(model, x[:1], "exported-program", tmp_path / "m.pt2")
    assert result.max_rel_diff <= 1e-4


class Branchy(nn.Module):
    """A conv whose output two modules read, a shared conv, a BN after a sum and one after a conv."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.shared, self.bn_s = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)  # bn_b is never called
        self.bn_sum = nn.BatchNorm2d(4)
        self.c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.a(x)
        z = self.bn_a(y) + y                      # the conv's output is also read by the sum
        s = self.bn_s(self.shared(self.shared(z)))  # a module called twice
        u = self.bn_sum(s + self.b(s))            # a BN after a sum
        return self.bn_c(self.c(u))               # the one foldable pair


def test_the_dataflow_folds_only_what_is_exact():
    torch.manual_seed(0)
    model = Branchy().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            random_bn(m)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    report = fc.deploy_(model, x[:1])
    assert [(f.bn, f.into) for f in report.folded] == [("bn_c", "c")]
    assert set(report.kept) == {"bn_a", "bn_s", "bn_sum", "bn_b"} and "not called" in report.kept["bn_b"]
    assert "also read elsewhere" in report.kept["bn_a"] and "more than once" in report.kept["bn_s"]
    assert "not the output of a module" in report.kept["bn_sum"]
    with torch.no_grad():
        assert close(model(x), expected)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.features(x)
        return self.bn(self.conv(x)) if x.sum() > 0 else x  # a branch on values: torch.fx cannot trace it


def test_a_model_that_does_not_trace_folds_its_sequential_pairs_only():
    model = Untraceable().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            random_bn(m)
    x = torch.randn(1, 3, 8, 8).abs()
    with torch.no_grad():
        expected = model(x)
    report = fc.deploy_(model, x)
    assert report.dataflow.startswith("nn.Sequential pairs only (the model does not trace with torch.fx: ")
    assert [(f.bn, f.into) for f in report.folded] == [("features.1", "features.0")]
    assert "does not trace" in report.kept["bn"] and isinstance(model.bn, nn.BatchNorm2d)
    with torch.no_grad():
        assert close(model(x), expected)


def test_bad_input_is_one_error_and_changes_nothing():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"call model.eval\(\) first \(the model is in training mode\)"):
        fc.deploy_(model.train(), torch.zeros(1, 3, 8, 8))
    model.eval()
    model[1].train()
    with pytest.raises(ValueError, match=r"call model.eval\(\) first \(layer '1' is in training mode\)"):
        fc.deploy_(model, torch.zeros(1, 3, 8, 8))
    model.eval()
    with pytest.raises(ValueError, match="layout must be one of auto, contiguous, channels_last"):
        fc.deploy_(model, torch.zeros(1, 3, 8, 8), layout="nhwc")
    with pytest.raises(ValueError, match="floating-point tensor with a batch dimension"):
        fc.deploy_(model, torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with torch.no_grad():
        model[1].running_var.fill_(-1.0)  # var + eps < 0: NaN weights
    with pytest.raises(ValueError, match=r"batch norm '1' after '0': folding gives NaN or Inf"):
        fc.deploy_(model, torch.zeros(1, 3, 8, 8))
    assert isinstance(model[1], nn.BatchNorm2d) and not hasattr(model, "factorch_deployed")


def channels_last(module):
    """Whether every spatial kernel of ``module`` is stored channels-last (1x1 kernels are both)."""
    kernels = [p for p in module.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    return bool(kernels) and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                                 for p in kernels)


def test_layout_is_measured_and_applied():
    model, x = decomposed("resnet20", 32)
    clock = lambda module, run: (run(), 0.5 if channels_last(module) else 1.0)[1]  # noqa: E731
    report = fc.deploy_(model, x[:1], profiler=fc.Profiler(warmup=0, runs=1, timer=clock))
    assert report.layout == "channels_last" and report.layout_latency == {"contiguous": 1.0, "channels_last": 0.5}
    assert channels_last(model) and report.batch == 1
    assert (report.latency_before, report.latency_after) == (1.0, 0.5)
    assert "layout: channels_last (contiguous 1e+03 ms, channels_last 500 ms)" in str(report)


def test_a_deployed_model_is_not_saved_as_a_checkpoint(tmp_path):
    model, x = decomposed("resnet20", 32)
    fc.deploy_(model, x[:1])
    with pytest.raises(ValueError, match="deployed"):
        fc.save(model, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_cli_export_deploy(tmp_path, capsys):
    from factorch.cli.main import run

    model, x = decomposed("resnet20", 32)
    fc.save(model, tmp_path / "m.pt", meta={"input_shape": [3, 32, 32]})
    out = tmp_path / "m.pt2"
    assert run(["export", str(tmp_path / "m.pt"), "--format", "exported-program", "--deploy", "--threads", "1",
                "--runs", "1", "--warmup", "0", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"batch norms: {len(batch_norms(model))} folded, 0 kept (dataflow: torch.fx)" in printed
    assert f"wrote {out} (exported-program" in printed
    program = torch.export.load(str(out))
    assert not any("batch_norm" in str(n.target) for n in program.graph.nodes)
    with torch.no_grad():
        assert close(program.module()(x), model(x))


def test_cli_export_deploy_timed_in_onnx_runtime(tmp_path, capsys):
    """``--deploy --runtime onnxruntime``: the forms are timed in ONNX Runtime, the graph shipped to it."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from factorch.cli.main import run

    model, x = decomposed("resnet20", 32)
    fc.save(model, tmp_path / "m.pt", meta={"input_shape": [3, 32, 32]})
    out = tmp_path / "m.onnx"
    assert run(["export", str(tmp_path / "m.pt"), "--format", "onnx", "--deploy", "--runtime", "onnxruntime",
                "--pad-to", "16", "--threads", "1", "--runs", "1", "--warmup", "0", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ONNX Runtime lays out activations itself" in printed and "at batch 1 in onnxruntime" in printed
    graph = onnx.load(str(out)).graph
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)


@pytest.mark.parametrize("slow_together", [True, False])
def test_the_per_layer_choices_are_checked_on_the_whole_model(slow_together):
    """Each layer alone is fastest factorized; a whole model holding factorized layers is charged
    1 s per factorized layer when ``slow_together`` (as when a runtime changes layouts around every
    chain): the dense plan wins there, the per-layer plan otherwise, and the report says which."""
    model, x = decomposed("resnet20", 32)
    with torch.no_grad():
        expected = model(x)

    def clock(module, run):
        run()
        inside = sum(isinstance(m, fc.layers.FactorizedLayer) for m in module.modules())
        if form_of(module) != "model":
            return 0.5 if form_of(module) == "factorized" else 1.0
        return 10.0 + (inside if slow_together else -inside)

    report = fc.deploy_(model, x[:1], profiler=fc.Profiler(warmup=0, runs=1, timer=clock), merge_factors=False)
    with torch.no_grad():
        assert close(model(x), expected)
    n = len(report.layers)
    assert set(report.plan_latency) == {"per layer", "dense"}  # the fewest-MACs plan is the per-layer one here
    assert report.plan_latency["dense"] == 10.0 and report.plan_latency["per layer"] == 10.0 + (n if slow_together else -n)
    if slow_together:
        assert report.plan == "dense" and set(report.forms()) == {"dense"}
        assert not any(isinstance(m, fc.layers.FactorizedLayer) for m in model.modules())
        assert all(row.note == "dense plan: the whole model measured fastest so" for row in report.layers)
        assert "-> dense" in str(report)
    else:
        assert report.plan == "per layer" and set(report.forms()) == {"factorized"}
