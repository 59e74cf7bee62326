"""Latency measurement: warm-up, interleaving, median, copies, modes; a fake clock (no wall-clock asserts)."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.measure.latency import compare, measure


class FakeClock:
    """Runs each call (so warm-up and call counts are real) and answers scripted durations."""

    def __init__(self, durations):
        self.durations = durations  # seconds, consumed in order
        self.modules = []

    def __call__(self, module, run):
        run()
        self.modules.append(module)
        return self.durations.pop(0)


def test_median_of_timed_runs_after_untimed_warmup():
    a, b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
    clock = FakeClock([5.0, 1.0, 3.0, 100.0, 2.0, 4.0])  # interleaved: a, b, a, b, a, b
    t = compare({"a": a, "b": b}, (4, 6, 6), fc.Profiler(warmup=2, runs=3, timer=clock))
    assert t["a"].forward == 3.0 and t["b"].forward == 4.0  # medians of (5, 3, 2) and (1, 100, 4)
    assert t["a"].forward_backward is None
    assert [m.kernel_size for m in clock.modules] == [(3, 3), (1, 1)] * 3  # warm-up calls are not timed
    assert all(m is not a and m is not b for m in clock.modules)  # copies are timed, never the caller's


def test_forward_backward_timed_on_copies_in_train_mode():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = []
    clock = lambda module, run: (modes.append(module.training), run(), 1e-3)[-1]
    t = measure(model, (3, 8, 8), fc.Profiler(warmup=1, runs=2, backward=True, timer=clock), batch=4)
    assert t.forward == pytest.approx(1e-3) and t.forward_backward == pytest.approx(1e-3)
    assert modes == [False, False, True, True]  # inference in eval mode, the training step in train mode
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched


def test_same_input_for_every_variant():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((x.shape, x.dtype, x.data_ptr()))
            return x

    compare({"a": nn.Sequential(Spy()), "b": nn.Sequential(Spy())}, (2, 5, 5),
            fc.Profiler(warmup=0, runs=2, batch=3, timer=lambda m, run: (run(), 0.0)[1]))
    assert len(seen) == 4 and len(set(seen)) == 1 and seen[0][0] == (3, 2, 5, 5)


def test_real_clock_gives_positive_medians():
    t = measure(nn.Conv2d(3, 4, 3), (3, 8, 8), fc.Profiler(warmup=1, runs=3, threads=1))
    assert t.forward > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events():
    t = measure(nn.Conv2d(16, 16, 3), (16, 32, 32), fc.Profiler(warmup=2, runs=3, backward=True, device="cuda"))
    assert t.forward > 0 and t.forward_backward > 0


@pytest.mark.parametrize("kwargs,match", [
    ({"runs": 0}, "runs"), ({"warmup": -1}, "warmup"), ({"batch": 0}, "batch"), ({"threads": 0}, "threads"),
    ({"runs": 2.5}, "runs"), ({"device": "gpu0"}, "device"),
])
def test_profiler_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fc.Profiler(**kwargs)


def test_time_interleaved_warms_up_then_interleaves_and_takes_medians():
    from factorch.measure.latency import time_interleaved

    log = []
    calls = {name: (lambda name=name: log.append(name)) for name in "ABC"}
    durations = {"A": [3.0, 1.0, 2.0], "B": [9.0, 5.0, 7.0], "C": [0.5, 0.5, 4.0]}
    timed = []

    def clock(name, run):
        timed.append(name)
        run()
        return durations[name].pop(0)

    medians = time_interleaved(calls, warmup=2, runs=3, timer=clock)
    assert medians == {"A": 2.0, "B": 7.0, "C": 0.5}
    assert log == list("ABC") * 5 and timed == list("ABC") * 3  # 2 untimed rounds first, then A, B, C, A, ...


@pytest.mark.parametrize("kwargs,match", [
    ({"warmup": -1}, "warmup"), ({"runs": 0}, "runs"), ({"runs": 1.5}, "runs"), ({"calls": {}}, "at least one"),
])
def test_time_interleaved_bad_input(kwargs, match):
    from factorch.measure.latency import time_interleaved, wall_clock

    args = {"calls": {"a": lambda: None}, "warmup": 0, "runs": 1, "timer": wall_clock(), **kwargs}
    with pytest.raises(ValueError, match=match):
        time_interleaved(args.pop("calls"), **args)


def test_wall_clock_times_the_call():
    from factorch.measure.latency import time_interleaved, wall_clock

    medians = time_interleaved({"conv": lambda: nn.Conv2d(3, 4, 3)(torch.randn(1, 3, 8, 8))}, warmup=1, runs=2,
                               timer=wall_clock("cpu"))
    assert medians["conv"] > 0


class _Counting(nn.Module):
    """A conv that counts its eager forward calls."""

    def __init__(self):
        super().__init__()
        self.conv, self.calls = nn.Conv2d(4, 8, 3, padding=1), 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def test_onnxruntime_runtime_times_the_exported_graph():
    """``runtime="onnxruntime"``: every timed call runs an ONNX Runtime session, not the module (its
    forward runs only while exporting); the timer sees each variant's own module copy."""
    pytest.importorskip("onnxruntime")
    seen = []

    def clock(module, run):
        before = module.calls
        run()
        seen.append((type(module).__name__, module.calls - before))
        return 1e-3

    profiler = fc.Profiler(warmup=2, runs=5, threads=1, runtime="onnxruntime", timer=clock)
    t = compare({"a": _Counting(), "b": _Counting()}, (4, 6, 6), profiler, batch=2)
    assert set(t) == {"a", "b"} and t["a"].forward == 1e-3 and t["a"].forward_backward is None
    assert len(seen) == 10 and all(name == "_Counting" and calls == 0 for name, calls in seen)


@pytest.mark.parametrize("kwargs,match", [
    (dict(runtime="tvm"), "runtime must be one of eager, onnxruntime, got 'tvm'"),
    (dict(runtime="onnxruntime", backward=True), "times inference in ONNX Runtime"),
    (dict(runtime="onnxruntime", amp=True), "times inference in ONNX Runtime"),
])
def test_onnxruntime_profiler_refuses_what_it_cannot_time(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fc.Profiler(**kwargs)
