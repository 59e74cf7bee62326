"""One epoch of training and top-1 evaluation: the building blocks other workflows reuse."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from factorch.progress import track


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision: float16 on CUDA (with a GradScaler), bfloat16 on the CPU."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def _to(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                device: Optional[torch.device | str] = None, scaler: Optional[Any] = None,
                scheduler: Optional[Any] = None, *, amp: bool = False, channels_last: bool = False,
                desc: str = "train", extra_loss: Optional[Callable[[], Optional[Tensor]]] = None,
                after_step: Optional[Callable[[], None]] = None) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader`` with cross-entropy; returns
    ``{"loss", "acc", "seconds", "samples"}`` (mean loss and top-1 accuracy over the epoch).

    ``scaler``: a ``torch.amp.GradScaler`` (float16 AMP); ``scheduler``: stepped after every
    optimizer step (per-batch schedules; an epoch schedule is the caller's); ``device``: default
    the model's. ``extra_loss()``: a term added to every batch's loss before the backward pass
    (e.g. ``fc.ADMM.penalty``; None: nothing); the reported loss is the cross-entropy alone.
    ``after_step()``: called after every optimizer step. Loss and accuracy are summed on the
    device and read once (no per-batch sync).
    """
    device = torch.device(device) if device is not None else model_device(model)
    use_scaler = scaler is not None and scaler.is_enabled()
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    samples = 0
    start = time.perf_counter()
    for x, y in track(loader, desc=desc, total=len(loader)):
        x, y = _to(x, device, channels_last), y.to(device, non_blocking=True)
        with autocast(device, amp):
            out = model(x)                                   # (B, classes)
            loss = F.cross_entropy(out, y)
        term = extra_loss() if extra_loss is not None else None
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    n = max(samples, 1)
    return {"loss": float(loss_sum) / n, "acc": int(correct) / n, "seconds": seconds, "samples": samples}


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
