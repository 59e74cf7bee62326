"""Fast by default: the memory-format rule, channels_last equal to NCHW, and the
training decomposition event's keep_if_faster decided by a fake clock (no wall-clock asserts)."""
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import factorch as fc
import factorch.training.run as run_module
from factorch import registry
from factorch.cli.main import build_parser
from factorch.cli.train import _command
from factorch.layers.base import FactorizedLayer
from factorch.cli.events import events_from_flags
from factorch.training import TrainConfig, train
from factorch.training.events import Decompose, training_profiler
from factorch.training.loop import uses_channels_last

TIMES = ("epoch_seconds", "train_seconds", "event_seconds", "eval_seconds", "time")
BASE = dict(model="lenet5", dataset="digits", subset=160, batch_size=32, lr=0.05, epochs=3)


def _cfg(keep_if_faster=False, **kw):
    """A run with a decomposition after epoch 1 (Tucker-2 + SVD at half the parameters)."""
    return TrainConfig(**{**BASE, **kw}, events=(Decompose(1, methods=(fc.Tucker2(0.5), fc.SVD(0.5)),
                                                           keep_if_faster=keep_if_faster),))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 24, 3, stride=2, padding=(1, 0), bias=False)
        self.c = nn.Conv2d(24, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.c(self.b(torch.relu(self.a(x)))).mean((2, 3)))


def test_memory_format_rule():
    conv, mlp = ConvNet(), fc.models.create("mlp")
    assert uses_channels_last(None, conv, "cpu") and uses_channels_last(None, conv, torch.device("cuda", 1))
    assert not uses_channels_last(None, mlp, "cpu")  # no 4-D activations: no layout to choose
    assert not uses_channels_last(None, conv, "meta")  # a device where it was not measured faster
    assert uses_channels_last(True, mlp, "cpu") and not uses_channels_last(False, conv, "cpu")  # the user's choice


@pytest.mark.parametrize("method_type", registry.method_types())
def test_channels_last_outputs_equal_nchw_for_every_method(method_type):
    torch.manual_seed(0)
    model = ConvNet().double()
    fc.decompose_(model, method_type(0.5), example_input=torch.zeros(1, 3, 11, 9, dtype=torch.float64))
    assert any(isinstance(m, FactorizedLayer) for m in model.modules())
    x = torch.randn(4, 3, 11, 9, dtype=torch.float64)
    nchw = model(x)
    model.to(memory_format=torch.channels_last)
    nhwc = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(nhwc, nchw, rtol=1e-10, atol=1e-10)


def clock(slower=(fc.layers.TuckerConv2d,), spy=None):
    """A fake clock: dense layers take 1 s, factorized layers of the ``slower`` types 2 s, others 0.25 s."""
    def timer(module, run):
        if spy is not None:
            hook = module.register_forward_pre_hook(lambda m, args: spy.append(
                (tuple(args[0].shape), args[0].is_contiguous(memory_format=torch.channels_last),
                 torch.is_autocast_enabled("cpu"), torch.is_grad_enabled())))
        run()
        if spy is not None:
            hook.remove()
        if not isinstance(module, FactorizedLayer):
            return 1.0
        return 2.0 if isinstance(module, slower) else 0.25
    return timer


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_event_keeps_slower_layers_dense_and_says_why(tmp_path):
    lines = []
    cfg = _cfg(keep_if_faster=fc.Profiler(warmup=0, runs=1, timer=clock()))
    train(cfg, tmp_path / "run", log=lines.append)
    event = _rows(tmp_path / "run")[1]["event"]
    assert event["layers"] == ["fc1", "fc2", "fc3"]  # SVD: "faster"; Tucker-2 conv2: "slower", kept dense
    reason = event["skipped"]["conv2"]
    assert reason.startswith("kept dense: factorized runs at 0.50x") and "dense 1e+03 ms, factorized 2e+03 ms" in reason
    log = "\n".join(lines)
    assert "kept factorized: 4.00x faster" in log and "kept dense: factorized runs at 0.50x" in log
    model = fc.load(tmp_path / "run" / "model.pt")
    assert type(model.conv2) is nn.Conv2d and isinstance(model.fc1, fc.layers.SVDLinear)
    # every factorized layer "slower": nothing decomposed, and the warning names keep_if_faster
    lines.clear()
    slow = clock(slower=(FactorizedLayer,))
    train(_cfg(keep_if_faster=fc.Profiler(warmup=0, runs=1, timer=slow)), tmp_path / "none",
          log=lines.append)
    assert _rows(tmp_path / "none")[1]["event"]["changed"] == 0
    assert any("no factorized layer was faster" in line and "--no-keep-if-faster" in line for line in lines)


def test_event_times_a_training_step_at_the_training_batch_and_layout(tmp_path):
    seen = []
    cfg = _cfg(amp=True, keep_if_faster=fc.Profiler(warmup=0, runs=1, timer=clock(spy=seen)))
    train(cfg, tmp_path / "run", log=lambda s: None)
    conv2 = {s for s in seen if len(s[0]) == 4}
    # conv2's real input (6 channels, 8x8: digits are 16x16, pooled once after conv1) at batch 32,
    # channels_last (the run's layout, auto), under autocast (--amp), with gradients (forward+backward)
    assert {s[0] for s in conv2} == {(32, 6, 8, 8)} and all(cl and amp for _, cl, amp, _ in conv2)
    assert any(grad for *_, grad in conv2)
    assert {s[0] for s in seen if len(s[0]) == 2} == {(32, 400), (32, 120), (32, 84)}


def test_training_profiler_defaults():
    assert training_profiler(False, 64, True, False) is None
    p = training_profiler(True, 64, True, False)
    assert (p.batch, p.backward, p.channels_last, p.amp, p.warmup, p.runs) == (64, True, True, False, 2, 5)
    given = training_profiler(fc.Profiler(batch=8, runs=3, threads=1), 64, False, True)
    assert (given.batch, given.runs, given.threads, given.backward, given.amp) == (8, 3, 1, True, True)


def test_keep_if_faster_off_times_nothing(tmp_path, monkeypatch):
    def never(*args, **kw):
        raise AssertionError("timed although keep_if_faster is off")
    monkeypatch.setattr("factorch.api.compare", never)
    cfg = _cfg(keep_if_faster=False)
    train(cfg, tmp_path / "run", log=lambda s: None)
    assert _rows(tmp_path / "run")[1]["event"]["layers"] == ["conv2", "fc1", "fc2", "fc3"]
    with pytest.raises(ValueError, match="keep_if_faster"):
        _cfg(keep_if_faster="yes")
    with pytest.raises(ValueError, match="channels_last"):
        _cfg(channels_last="auto")
    assert cfg.as_dict()["events"][0]["keep_if_faster"] is False  # the clock is no setting: a profiler is True
    assert _cfg(keep_if_faster=fc.Profiler(timer=clock())).as_dict()["events"][0]["keep_if_faster"] is True


def test_resume_across_the_timed_decomposition_is_exact(tmp_path, monkeypatch, kept_checkpoints):
    cfg = _cfg(keep_if_faster=fc.Profiler(warmup=0, runs=1, timer=clock()))
    kept = kept_checkpoints
    train(cfg, tmp_path / "clean", log=lambda s: None)
    monkeypatch.undo()
    clean = [{k: v for k, v in r.items() if k not in TIMES} for r in _rows(tmp_path / "clean")]
    for k in (1, 2):  # before the event (it decides again, the same way) and after it (the checkpoint's structure)
        d = tmp_path / f"from{k}"
        d.mkdir()
        shutil.copy(kept / f"epoch{k}.pt", d / "checkpoint.pt")
        train(cfg, d, resume=True, log=lambda s: None)
        assert [{k: v for k, v in r.items() if k not in TIMES} for r in _rows(d)] == clean, k
        a, b = fc.load(d / "model.pt").state_dict(), fc.load(tmp_path / "clean" / "model.pt").state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), k


def test_new_layers_follow_the_run_layout(tmp_path, monkeypatch):
    formats = []
    train_epoch = run_module.train_epoch

    def recording(net, *args, **kw):
        convs = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
        formats.append((kw["channels_last"], all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)))
        return train_epoch(net, *args, **kw)
    monkeypatch.setattr(run_module, "train_epoch", recording)
    train(_cfg(keep_if_faster=False), tmp_path / "auto", log=lambda s: None)
    assert formats == [(True, True)] * 3  # the factor convs of epoch 2 on too
    formats.clear()
    train(_cfg(channels_last=False), tmp_path / "nchw", log=lambda s: None)
    assert [cl for cl, _ in formats] == [False] * 3


def test_cli_flags():
    parser = build_parser()
    base = ["train", "--model", "lenet5"]
    args = parser.parse_args([*base, "--decompose-at", "1"])
    (event,) = events_from_flags(args)
    assert event.keep_if_faster is True and args.channels_last is None  # on by default; layout auto
    args = parser.parse_args([*base, "--decompose-at", "1", "--no-keep-if-faster", "--no-channels-last"])
    (event,) = events_from_flags(args)
    assert event.keep_if_faster is False and args.channels_last is False
    assert {"--no-keep-if-faster", "--no-channels-last"} <= set(_command(args, "train").split())
    assert parser.parse_args([*base, "--channels-last"]).channels_last is True


WORKER = textwrap.dedent('''
    import sys, torch, factorch as fc
    from torch import nn
    from factorch.layers.base import FactorizedLayer
    from factorch.distributed import Distributed
    from factorch.training.events import decompose_event
    dist = Distributed.from_env("cpu")
    torch.manual_seed(dist.rank)            # different weights on each rank before the event
    model = fc.models.create("lenet5", num_classes=10, in_channels=1)

    def rank0_clock(module, run):          # Tucker-2 "slower", SVD "faster"
        run()
        if not isinstance(module, FactorizedLayer):
            return 1.0
        return 2.0 if isinstance(module, fc.layers.TuckerConv2d) else 0.5

    def other_clock(module, run):
        raise AssertionError("only rank 0 times")
    timing = fc.Profiler(warmup=0, runs=1, batch=4, backward=True, timer=rank0_clock if dist.rank == 0 else other_clock)
    event = decompose_event(model, [fc.Tucker2(0.5), fc.SVD(0.5)], torch.zeros(1, 1, 16, 16), dist,
                            keep_if_faster=timing)
    torch.save({"state": model.state_dict(), "changed": event.changed, "skipped": event.skipped,
                "conv2": type(model.conv2).__name__}, f"{sys.argv[1]}/rank{dist.rank}.pt")
    dist.close()
''')


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with Gloo is not available")
def test_ddp_rank0_decides_and_every_rank_follows(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["changed"] == r1["changed"] == ["fc1", "fc2", "fc3"] and r0["conv2"] == r1["conv2"] == "Conv2d"
    assert r0["skipped"] == r1["skipped"] and r0["skipped"]["conv2"].startswith("kept dense")
    assert r0["state"].keys() == r1["state"].keys()
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
