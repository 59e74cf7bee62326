"""One epoch of training and top-1 evaluation: the building blocks other workflows reuse."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from factorch.measure.latency import autocast
from factorch.progress import track


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# Devices whose convolutions run faster in channels_last (NHWC), for the dense and the factorized
# models alike. CPU (oneDNN): measured on this project's 2-core machine, fp32, batch 128, 1 thread
# (benchmarks/results/train_throughput_cpu*.md): dense VGG-19 62.6 -> 77.4 img/s, ResNet-56
# 143 -> 175, DenseNet-40 16 -> 32, and every Tucker-2 model gains more (its 1x1 factor convs skip
# the NCHW<->NHWC reorders). CUDA: cuDNN's tensor-core convolution kernels are NHWC (AMP).
CHANNELS_LAST_DEVICES = ("cpu", "cuda")


def uses_channels_last(choice: Optional[bool], model: nn.Module, device: torch.device | str) -> bool:
    """The memory format a run uses: ``choice`` when given (``--channels-last`` /
    ``--no-channels-last``), else ("auto") channels_last exactly when the model has a 2-D
    convolution (4-D activations; an MLP has no layout to choose) and the device is one of
    ``CHANNELS_LAST_DEVICES``, where it was measured faster. Both the dense model and the
    decomposed one follow the rule, so their speed ratio compares like with like. 1-D and 3-D
    convs stay contiguous (channels_last_3d was not measured faster here), and a model that also
    holds 5-D weights (a Conv3d) does too: channels_last cannot lay them out."""
    if choice is not None:
        return bool(choice)
    return torch.device(device).type in CHANNELS_LAST_DEVICES and \
        any(isinstance(m, nn.Conv2d) for m in model.modules()) and not any(p.dim() == 5 for p in model.parameters())


def to_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` in place in channels_last (4-D parameters NHWC) or in the contiguous format: also
    after a decomposition, whose new factor convs are built contiguous."""
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _to(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@dataclass(frozen=True)
class Batch:
    """One training step's batch, for the events' loss terms: the ``inputs`` (B, ...), the model's
    ``outputs`` (B, classes; with the graph) and the ``targets`` (B,)."""

    inputs: Tensor
    outputs: Tensor
    targets: Tensor


CHECK_EVERY = 16  # steps between reads of the non-finite-loss flag on a GPU (a read waits for the device)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: the run stops (its last good checkpoint stays)."""


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                device: Optional[torch.device | str] = None, scaler: Optional[Any] = None,
                scheduler: Optional[Any] = None, *, amp: bool = False, channels_last: bool = False,
                desc: str = "train", extra_loss: Optional[Callable[[Batch], Optional[Tensor]]] = None,
                after_step: Optional[Callable[[], None]] = None, stop_on_nonfinite: bool = True
                ) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader`` with cross-entropy; returns
    ``{"loss", "acc", "seconds", "samples", "bad_step"}`` (mean loss and top-1 accuracy over the
    epoch; ``bad_step``: the first step, from 1, whose training loss was NaN or infinite, else 0).

    ``scaler``: a ``torch.amp.GradScaler`` (float16 AMP); ``scheduler``: stepped after every
    optimizer step (per-batch schedules; an epoch schedule is the caller's); ``device``: default
    the model's. ``extra_loss(batch)``: a term added to every batch's loss before the backward
    pass, given the ``Batch`` (e.g. ``fc.ADMM.penalty``, a distillation term; None: nothing),
    computed under the same autocast; the reported loss is the cross-entropy alone.
    ``after_step()``: called after every optimizer step. Loss and accuracy are summed on the
    device and read once (no per-batch sync). A non-finite loss is flagged on the device too; with
    ``stop_on_nonfinite`` the pass ends at the first one (checked every step on the CPU, every
    ``CHECK_EVERY`` steps on a GPU; under DDP the caller lets every rank finish the pass, so none
    waits for another in a collective, and decides from every rank's ``bad_step``).
    """
    device = torch.device(device) if device is not None else model_device(model)
    use_scaler = scaler is not None and scaler.is_enabled()
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    samples = 0
    bad = torch.zeros((), dtype=torch.int64, device=device)  # first step with a non-finite loss (0: none)
    check = 1 if device.type == "cpu" else CHECK_EVERY
    start = time.perf_counter()
    for step, (x, y) in enumerate(track(loader, desc=desc, total=len(loader)), 1):
        x, y = _to(x, device, channels_last), y.to(device, non_blocking=True)
        with autocast(device, amp):
            out = model(x)                                   # (B, classes)
            loss = F.cross_entropy(out, y)
            term = extra_loss(Batch(x, out, y)) if extra_loss is not None else None
        total = loss if term is None else loss + term
        optimizer.zero_grad(set_to_none=True)
        if use_scaler:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()
        loss_sum += loss.detach().double() * len(y)
        correct += (out.detach().argmax(1) == y).sum()
        samples += len(y)
        bad = torch.where((bad == 0) & ~torch.isfinite(total.detach()), step, bad)
        if stop_on_nonfinite and step % check == 0 and int(bad):
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    n = max(samples, 1)
    return {"loss": float(loss_sum) / n, "acc": int(correct) / n, "seconds": seconds, "samples": samples,
            "bad_step": int(bad)}


@torch.no_grad()
def count_correct(model: nn.Module, loader: DataLoader, device: Optional[torch.device | str] = None,
                  *, amp: bool = False, channels_last: bool = False) -> tuple[int, int]:
    """(correct top-1 predictions, examples) over ``loader``, in eval mode (mode restored after)."""
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    try:
        for x, y in loader:
            x, y = _to(x, device, channels_last), y.to(device, non_blocking=True)
            with autocast(device, amp):
                correct += (model(x).argmax(1) == y).sum()
            total += len(y)
    finally:
        model.train(was_training)
    return int(correct), total


def evaluate(model: nn.Module, loader: DataLoader, device: Optional[torch.device | str] = None, *,
             amp: bool = False, channels_last: bool = False) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` over ``loader`` (eval mode, no gradients)."""
    correct, total = count_correct(model, loader, device, amp=amp, channels_last=channels_last)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no examples")
    return correct / total
