"""Measured latency: what a layer (or a model) costs on this machine, not what its MACs promise.

``docs/math.md``, "Speed-up reality": fewer MACs often buy little or no speed on real hardware (a factorized conv
is 2-5 kernels of low arithmetic intensity). So we measure, honestly:

* every variant gets the same input: same batch, shape, dtype, device and memory layout;
* warm-up calls first (allocator, cuDNN/oneDNN algorithm choice), then ``runs`` timed calls,
  and the **median** is reported (robust to a busy machine);
* variants are timed **interleaved** (A, B, C, A, B, C, ...) so drift in machine load hits them
  alike, and their ratio is measured side by side in one process;
* on CUDA each call is timed with CUDA events (the GPU's own clock, after synchronising); on the
  CPU with ``time.perf_counter``.

``time_interleaved`` is that procedure for any callables (``compare`` times modules with it; the
benchmark scripts time training steps and whole models). The clock is injectable:
``Profiler(timer=...)`` takes ``timer(module, run) -> seconds`` where ``run()`` performs one call
of ``module``; ``time_interleaved(timer=...)`` the same with the variant's name in place of the
module. ``default_timer`` uses CUDA events on a GPU (the GPU's own time of the queued work),
``wall_clock`` the host's ``perf_counter`` with the GPU synchronised before and after (launch
overhead included, which CUDA graphs remove). Tests pass a fake timer (a test never asserts a
wall-clock time).
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["Latency", "Profiler", "Timer", "autocast", "compare", "default_timer", "measure", "time_interleaved",
           "wall_clock"]

RUNTIMES = ("eager", "onnxruntime")

# timer(what, run) -> seconds: performs run() once and returns its duration; ``what`` is the module
# timed (Profiler, compare) or the variant's name (time_interleaved): the clocks here ignore it
Timer = Callable[[Any, Callable[[], None]], float]


@dataclass(frozen=True)
class Profiler:
    """How to time a layer or a model.

    ``batch``: the batch size to time at (None: the batch of the example input given to the
    caller); ``warmup`` untimed calls, then ``runs`` timed ones (the median is kept);
    ``backward``: also time forward+backward (a training step's cost, gradients w.r.t. the
    parameters and the input); ``device``: where to run (None: where the module is);
    ``channels_last``: NHWC memory layout for module and input; ``amp``: under autocast, as
    training's ``--amp`` (float16 on CUDA, bfloat16 elsewhere); ``threads``: CPU threads while
    timing (None: torch's setting; 1 gives stable numbers on a machine shared with other jobs,
    where a multi-threaded op waits for its slowest thread's time slice); ``timer``: the clock
    (None: CUDA events on a GPU, ``perf_counter`` otherwise); ``runtime``: what runs the module,
    ``"eager"`` (PyTorch) or ``"onnxruntime"`` (exported and run in an ONNX Runtime session with
    ``threads`` intra-op threads: the deployment runtime's own kernels and layouts, forward only;
    ``factorch.measure.onnx_runtime``).
    """

    batch: Optional[int] = None
    warmup: int = 5
    runs: int = 20
    backward: bool = False
    device: Optional[str] = None
    channels_last: bool = False
    amp: bool = False
    threads: Optional[int] = None
    timer: Optional[Timer] = field(default=None, compare=False)
    runtime: str = "eager"

    def __post_init__(self) -> None:
        for name, low in (("batch", 1), ("warmup", 0), ("runs", 1), ("threads", 1)):
            value = getattr(self, name)
            if value is None and name in ("batch", "threads"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Profiler {name} must be an int >= {low}, got {value!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"Profiler runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.runtime == "onnxruntime":
            from factorch.exporters import missing
            from factorch.measure.onnx_runtime import NEEDS

            if self.backward or self.amp:
                raise ValueError("Profiler(runtime='onnxruntime') times inference in ONNX Runtime: backward and amp "
                                 "are PyTorch's (use runtime='eager')")
            absent = missing(NEEDS)
            if absent:
                raise ValueError(f"Profiler(runtime='onnxruntime') needs {', '.join(absent)}, not installed here: "
                                 "pip install 'factorch[export]'")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"Profiler device {self.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None


@dataclass(frozen=True)
class Latency:
    """Median seconds per call: ``forward`` (no grad) and ``forward_backward`` (None if not timed)."""

    forward: float
    forward_backward: Optional[float] = None


def default_timer(device: torch.device) -> Timer:
    """CUDA events on a GPU (synchronised), ``time.perf_counter`` elsewhere (``wall_clock``)."""
    if device.type == "cuda":
        def cuda_events(what: Any, run: Callable[[], None]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)  # nothing queued before the start mark
            start.record()
            run()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3  # ms -> s
        return cuda_events
    return wall_clock(device)


def wall_clock(device: Union[str, torch.device] = "cpu") -> Timer:
    """``time.perf_counter`` around one call; on a CUDA ``device`` the GPU is synchronised before
    the start (nothing queued earlier is counted) and before the stop (the call's kernels are)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"wall_clock device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def clock(what: Any, run: Callable[[], None]) -> float:
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        return time.perf_counter() - t0
    return clock


def time_interleaved(calls: Mapping[str, Callable[[], None]], *, warmup: int, runs: int,
                     timer: Timer) -> dict[str, float]:
    """Median seconds per call of every callable in ``calls`` (name -> a call that runs one
    variant once): ``warmup`` untimed rounds first (allocator, algorithm choice), then ``runs``
    timed rounds, each calling every variant once in order (A, B, C, A, B, C, ...) so that drift
    in the machine's load hits them alike. ``timer(name, run)`` times one call: ``wall_clock`` or
    ``default_timer`` for the device the calls run on, or a test's fake clock."""
    if not calls:
        raise ValueError("time_interleaved needs at least one call to time")
    for name, value, low in (("warmup", warmup, 0), ("runs", runs, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"time_interleaved {name} must be an int >= {low}, got {value!r}")
    for _ in range(warmup):
        for run in calls.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, run in calls.items():
            samples[name].append(timer(name, run))
    return {name: statistics.median(s) for name, s in samples.items()}


def _device_of(module: nn.Module) -> torch.device:
    ref = next(module.parameters(), None)
    return ref.device if ref is not None else torch.device("cpu")


def _dtype_of(module: nn.Module) -> torch.dtype:
    ref = next(module.parameters(), None)
    return ref.dtype if ref is not None else torch.get_default_dtype()


def _prepare(module: nn.Module, profiler: Profiler, device: torch.device) -> nn.Module:
    """A copy of the module as it will be timed (on ``device``, in the profiler's layout): timing
    never moves the caller's module, changes its mode, or writes its ``.grad``/BN statistics."""
    module = copy.deepcopy(module).to(device)
    return module.to(memory_format=torch.channels_last) if profiler.channels_last else module


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """Mixed precision as training runs it: float16 on CUDA (with a GradScaler), bfloat16 elsewhere."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def _calls(module: nn.Module, x: Tensor, backward: bool, amp: bool = False) -> Callable[[], None]:
    """One call of ``module``: inference (eval mode, no grad), or a training step's forward and
    backward (train mode; gradients w.r.t. parameters and input, as for a mid-network layer);
    under autocast with ``amp``."""
    if not backward:
        module.eval()

        def forward() -> None:
            with torch.no_grad(), autocast(x.device, amp):
                module(x)
        return forward
    module.train()
    with torch.no_grad(), autocast(x.device, amp):
        grad = torch.randn_like(module(x))  # the upstream gradient, made outside the timed calls

    def forward_backward() -> None:
        with autocast(x.device, amp):
            out = module(x)
        out.backward(grad)
    return forward_backward


def compare(variants: dict[str, nn.Module], input_shape: tuple[int, ...], profiler: Profiler = Profiler(),
            batch: Optional[int] = None) -> dict[str, Latency]:
    """Time every module in ``variants`` on the same random input ``(batch, *input_shape)``:
    ``input_shape`` is one example's, without the batch (a shape with the batch is refused).

    ``batch`` is used when ``profiler.batch`` is None (default 1). Dtype and device come from the
    first variant (or ``profiler.device``); every variant runs on the very same input tensor.
    Calls are interleaved across variants, warm-up first, and the median is returned. Forward is
    timed in eval mode without grad (inference), forward+backward in train mode (a training
    step), each on a copy: the caller's modules are not changed.
    """
    if not variants:
        raise ValueError("compare needs at least one module to time")
    first = next(iter(variants.values()))
    device = torch.device(profiler.device) if profiler.device else _device_of(first)
    n = profiler.batch or batch or 1
    x = torch.randn((n, *input_shape), dtype=_dtype_of(first), device=device)
    if profiler.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    # ONNX Runtime returns its outputs on the host: the wall clock holds for it on any device
    timer = profiler.timer or (wall_clock() if profiler.runtime == "onnxruntime" else default_timer(device))
    modules = {k: _prepare(m, profiler, device) for k, m in variants.items()}
    modes = [("forward", False)] + ([("forward_backward", True)] if profiler.backward else [])
    threads = torch.get_num_threads()
    if profiler.threads:
        torch.set_num_threads(profiler.threads)
    try:
        result = _time_modes(modules, x, modes, profiler, timer)
    except (RuntimeError, ValueError, IndexError) as e:
        if _takes_whole_input(modules, x[0]):  # (1, 3, 32, 32) given for a conv: x is (n, 1, 3, 32, 32)
            raise ValueError(f"input_shape {tuple(input_shape)} includes the batch: give the shape of one "
                             f"example without it, {tuple(input_shape[1:])}, and the batch as batch= or "
                             "Profiler(batch=...)") from None
        raise e
    finally:
        torch.set_num_threads(threads)
    return {k: Latency(**v) for k, v in result.items()}


def _takes_whole_input(modules: dict[str, nn.Module], shaped_as_given: Tensor) -> bool:
    """Whether every module runs on a tensor of exactly the ``input_shape`` it was given (so the
    failure was that shape read as one example and given a batch dimension on top)."""
    if shaped_as_given.dim() < 2:
        return False
    try:
        with torch.no_grad():
            for module in modules.values():
                module.eval()(shaped_as_given)
    except (RuntimeError, ValueError, IndexError):
        return False
    return True


def _time_modes(modules: dict[str, nn.Module], x: Tensor, modes: list[tuple[str, bool]],
                profiler: Profiler, timer: Timer) -> dict[str, dict[str, float]]:
    """Per module, per mode (forward; forward+backward), the median of ``time_interleaved``."""
    result: dict[str, dict[str, float]] = {k: {} for k in modules}
    for mode, backward in modes:
        xin = x.detach().requires_grad_(True) if backward else x  # a mid-network layer also gets d/dx
        if profiler.runtime == "onnxruntime":
            from factorch.measure.onnx_runtime import session_call

            calls = {k: session_call(m, x, profiler.threads) for k, m in modules.items()}
        else:
            calls = {k: _calls(m, xin, backward, profiler.amp) for k, m in modules.items()}
        medians = time_interleaved(calls, warmup=profiler.warmup, runs=profiler.runs,
                                   timer=lambda name, run: timer(modules[name], run))
        for k, median in medians.items():
            result[k][mode] = median
    return result


def measure(module: nn.Module, input_shape: tuple[int, ...], profiler: Profiler = Profiler(),
            batch: Optional[int] = None) -> Latency:
    """Median latency of one module on a random ``(batch, *input_shape)`` input (see ``compare``)."""
    return compare({"module": module}, input_shape, profiler, batch)["module"]


def as_profiler(keep_if_faster: Union[bool, Profiler]) -> Optional[Profiler]:
    """``decompose_``'s ``keep_if_faster`` argument: False -> None, True -> ``Profiler()``."""
    if isinstance(keep_if_faster, Profiler):
        return keep_if_faster
    if keep_if_faster is True:
        return Profiler()
    if keep_if_faster is False or keep_if_faster is None:
        return None
    raise ValueError(f"keep_if_faster must be True, False or a fc.Profiler(...), got {keep_if_faster!r}")
