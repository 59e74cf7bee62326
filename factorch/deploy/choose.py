"""The measured choices of the deploy step: the memory layout, and per factorized layer the fastest
of its forms at the deployment batch size (the keep-if-faster rule of ``decompose_``, at inference).

Everything is timed with ``factorch.measure.latency.compare`` (the one timer: the same input,
interleaved, warm-up, median), on copies; the caller's modules are not touched.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from factorch.measure.latency import Profiler, compare

LAYOUTS = ("contiguous", "channels_last")


def has_2d_convs(model: nn.Module) -> bool:
    """Whether any module holds a 4-d weight (a 2-d conv): only those have a channels-last layout."""
    return any(p.dim() == 4 for p in model.parameters())


def in_layout(model: nn.Module, layout: str) -> nn.Module:
    """``model`` itself in ``layout`` (parameters converted in place; a no-op for contiguous)."""
    return model.to(memory_format=torch.channels_last) if layout == "channels_last" else model


def layout_profiler(profiler: Profiler, layout: str) -> Profiler:
    """The profiler that times a layer as the deployed model runs it: in ``layout`` (a conv with
    channels-last weights gives channels-last outputs, so the next layer gets them)."""
    return replace(profiler, channels_last=layout == "channels_last", backward=False)


def choose_layout(model: nn.Module, input_shape: tuple[int, ...], profiler: Profiler,
                  batch: int) -> tuple[str, dict[str, float]]:
    """The faster layout of ``model`` on the caller's (contiguous) inputs, and both latencies."""
    variants = {"contiguous": model, "channels_last": in_layout(copy.deepcopy(model), "channels_last")}
    t = compare(variants, input_shape, replace(profiler, channels_last=False, backward=False), batch)
    times = {k: v.forward for k, v in t.items()}
    return min(times, key=times.get), times


def fastest(variants: dict[str, nn.Module], input_shape: tuple[int, ...], profiler: Profiler,
            batch: int) -> tuple[str, dict[str, float]]:
    """The variant with the lowest median forward latency (ties go to the first), and every latency."""
    t = compare(variants, input_shape, profiler, batch)
    times = {k: v.forward for k, v in t.items()}
    return min(times, key=lambda k: (times[k], list(times).index(k))), times


def fastest_model(models: dict[str, nn.Module], input_shape: tuple[int, ...], profiler: Profiler,
                  batch: int) -> tuple[str, dict[str, float]]:
    """The whole model (of ``models``) with the lowest median latency on the caller's inputs (ties go
    to the first), and every latency."""
    t = compare(models, input_shape, replace(profiler, channels_last=False, backward=False), batch)
    times = {k: v.forward for k, v in t.items()}
    return min(times, key=lambda k: (times[k], list(times).index(k))), times


def model_latency(before: nn.Module, after: nn.Module, input_shape: tuple[int, ...], profiler: Profiler,
                  batch: int) -> tuple[float, float]:
    """The whole model before and after deployment, side by side on the caller's inputs."""
    t = compare({"before": before, "after": after}, input_shape, replace(profiler, channels_last=False,
                                                                         backward=False), batch)
    return t["before"].forward, t["after"].forward


def timing_batch(profiler: Optional[Profiler], example_batch: int) -> Optional[int]:
    return None if profiler is None else (profiler.batch or example_batch)
