"""One training run, epoch by epoch: the seed-000 pipeline (Elhoushi et al. 2019).

Train dense from scratch; at ``decompose_at`` decompose in place (Tucker-2, EVBMF ranks by
default), hand the optimizer over and keep training the small model on the same LR schedule;
optionally ``reconstruct_at`` the dense architecture and finish. After every epoch: a JSON line in
``RUN_DIR/metrics.jsonl`` and an atomic checkpoint ``RUN_DIR/checkpoint.pt``; at the end the final
model as a factorch checkpoint ``RUN_DIR/model.pt`` (``factorch count RUN_DIR/model.pt``).

Times: ``train_seconds`` is the training pass, ``event_seconds`` the decomposition or
reconstruction, ``time`` their running total (the training time of the paper's tables; test
evaluation is measured apart, as ``eval_seconds``). A resumed run continues the total from its
checkpoint: the part of an epoch lost to a kill is not counted.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from factorch import data as fdata
from factorch import models as fmodels
from factorch.count import count
from factorch.io import CheckpointError, apply_spec, atomic_write_text, load_weights, save
from factorch.training.checkpoint import (config_mismatch, load_run, rng_state, save_run, seed_everything,
                                          set_rng_state)
from factorch.training.config import DECOMPOSITION_ONLY, RUNTIME_ONLY, TrainConfig
from factorch.training.distributed import Distributed
from factorch.training.events import Event, decompose_event, reconstruct_event
from factorch.training.handoff import make_optimizer, rebuild_optimizer
from factorch.training.loop import count_correct, train_epoch

def print_line(line: str) -> None:
    """The default log: stdout, flushed per line so piped or redirected logs follow the run."""
    print(line, flush=True)


CHECKPOINT, METRICS, FINAL = "checkpoint.pt", "metrics.jsonl", "model.pt"
# settings a run started from another run's checkpoint may change (see ``train(start_from=...)``)
EXTENDABLE = ("epochs", "decompose_at", "reconstruct_at")


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False,
          start_from: Optional[str | os.PathLike] = None, log: Callable[[str], None] = print_line
          ) -> list[dict[str, Any]]:
    """Run ``cfg``, writing into ``out_dir``; returns the per-epoch metrics (on every rank).

    ``resume``: continue the run in ``out_dir`` from its last finished epoch (it must have been
    started with the same settings, up to ``data_dir``/``device``/``workers``); without it an
    existing run there is an error. ``start_from``: begin from another run's checkpoint, e.g. the
    finished original for "original-then-dec+E" (same settings up to epochs and the events, and
    it must not have passed this run's first event). Under ``torchrun`` every rank calls this.
    """
    dist = Distributed.from_env(cfg.device)
    try:
        return _train(cfg, Path(out_dir), resume, start_from, log if dist.is_main else (lambda s: None), dist)
    finally:
        dist.close()


def _train(cfg: TrainConfig, out: Path, resume: bool, start_from: Optional[str | os.PathLike],
           log: Callable[[str], None], dist: Distributed) -> list[dict[str, Any]]:
    ckpt_path, metrics_path = out / CHECKPOINT, out / METRICS
    state, source = _initial_state(cfg, ckpt_path, resume, start_from)
    if dist.world > 1 and cfg.batch_size % dist.world:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by the {dist.world} processes")
    seed_everything(cfg.seed)
    meta = fdata.info(cfg.dataset, cfg.data_dir)
    train_set = fdata.load(cfg.dataset, cfg.data_dir, train=True, subset=cfg.subset, augment=cfg.augment, seed=cfg.seed)
    test_set = fdata.load(cfg.dataset, cfg.data_dir, train=False, subset=cfg.subset, seed=cfg.seed)
    device = dist.device
    model = fmodels.create(cfg.model, meta.num_classes, meta.in_channels).to(device)
    example = torch.zeros((1, meta.in_channels, *_input_size(test_set, meta)), device=device)
    if dist.is_main:  # after the data and the model: bad input leaves no directory behind
        out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    if state is not None:
        apply_spec(model, state["factorized"])
        load_weights(model, state["model"], source)
        history = list(state["history"])
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][min(dist.rank, len(state["rng"]) - 1)])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sampler = DistributedSampler(train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size // dist.world, sampler=sampler,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda")
    test_shard = Subset(test_set, range(dist.rank, len(test_set), dist.world))
    # its own generator: creating a DataLoader iterator draws a seed, and evaluating (after events
    # too) must not move the global RNG that orders and augments the training data
    test_loader = DataLoader(test_shard, batch_size=256, num_workers=cfg.workers, pin_memory=device.type == "cuda",
                             generator=torch.Generator().manual_seed(cfg.seed))
    if dist.is_main:  # the log replays the checkpoint's history: lines of a killed epoch go away
        atomic_write_text("".join(json.dumps(r) + "\n" for r in history), metrics_path)
    start = len(history)
    if start:
        log(f"continuing {out} from {source} after epoch {start}/{cfg.epochs}")
    counts = count(model, example)
    net = dist.wrap(model)
    schedule = cfg.schedule
    elapsed = history[-1]["time"] if history else 0.0
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        event = _event_at(epoch, cfg, model, example, dist)
        event_seconds = time.perf_counter() - t0
        event_acc = None
        if event is not None:
            if cfg.channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = rebuild_optimizer(optimizer, model)
            net = dist.wrap(model)
            counts = count(model, example)
            event_acc = _accuracy(model, test_loader, dist, cfg)
            _log_event(log, epoch, event, event_acc, counts.params)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(epoch)
        sampler.set_epoch(epoch)
        stats = train_epoch(net, loader, optimizer, device, scaler, amp=cfg.amp, channels_last=cfg.channels_last,
                            desc=f"epoch {epoch + 1}/{cfg.epochs}")
        loss_sum, correct, samples = dist.sum([stats["loss"] * stats["samples"], stats["acc"] * stats["samples"],
                                               stats["samples"]])
        t1 = time.perf_counter()
        test_acc = _accuracy(model, test_loader, dist, cfg)
        elapsed += event_seconds + stats["seconds"]
        row = {"epoch": epoch + 1, "lr": schedule.lr_at(epoch), "train_loss": loss_sum / max(samples, 1),
               "train_acc": correct / max(samples, 1), "test_acc": test_acc,
               "epoch_seconds": event_seconds + stats["seconds"], "train_seconds": stats["seconds"],
               "event_seconds": event_seconds if event else 0.0, "eval_seconds": time.perf_counter() - t1,
               "time": elapsed, "params": counts.params, "macs": counts.macs,
               "event": event.record() if event else None, "event_test_acc": event_acc}
        history.append(row)
        rngs = dist.gather_object(rng_state())
        if dist.is_main:
            save_run(ckpt_path, config=cfg.as_dict(), epoch=epoch + 1, model=model, optimizer=optimizer,
                     scaler=scaler, history=history, rng=rngs)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        dist.barrier()
        log(_epoch_line(row, cfg.epochs))
    if dist.is_main:
        save(model, out / FINAL, meta={"input_shape": list(example.shape[1:]), "config": cfg.as_dict()})
    return history


def _initial_state(cfg: TrainConfig, ckpt_path: Path, resume: bool,
                   start_from: Optional[str | os.PathLike]) -> tuple[Optional[dict[str, Any]], str]:
    """The checkpoint to continue from (validated against ``cfg``) and its path; None for a fresh run."""
    if ckpt_path.exists() and not resume:
        raise ValueError(f"{ckpt_path.parent} already holds a run; pass --resume to continue it or choose another --out")
    if resume and ckpt_path.exists():
        state = load_run(ckpt_path)
        dense_only = state["config"].get("decompose_at") is None and cfg.decompose_at is None
        diff = config_mismatch(state["config"], cfg.as_dict(), RUNTIME_ONLY + (DECOMPOSITION_ONLY if dense_only else ()))
        if diff:
            raise CheckpointError(f"cannot resume {ckpt_path.parent}: settings differ ({diff})")
        return state, str(ckpt_path)
    if start_from is None:
        return None, ""
    state = load_run(start_from)
    saved = state["config"]
    # the run started from never decomposed: how this one decomposes is its own business
    ignore = RUNTIME_ONLY + EXTENDABLE + ("schedule_epochs",) + (DECOMPOSITION_ONLY if saved.get("decompose_at") is None else ())
    diff = config_mismatch(saved, cfg.as_dict(), ignore)
    if diff or (saved.get("schedule_epochs") or saved["epochs"]) != (cfg.schedule_epochs or cfg.epochs):
        raise CheckpointError(f"cannot start from {start_from}: settings differ ({diff or 'LR schedule length'})")
    first_event = min([e for e in (cfg.decompose_at, cfg.reconstruct_at) if e is not None], default=cfg.epochs)
    if saved.get("decompose_at") is not None and saved["decompose_at"] < state["epoch"] or state["epoch"] > first_event:
        raise CheckpointError(f"cannot start from {start_from}: it has passed this run's first event")
    return state, str(start_from)


def _input_size(dataset: Any, meta: fdata.DatasetInfo) -> tuple[int, int]:
    """(H, W) of the examples (the test split: no augmentation draws from the RNG)."""
    return tuple(dataset[0][0].shape[-2:]) if len(dataset) else meta.input_size


def _event_at(epoch: int, cfg: TrainConfig, model: torch.nn.Module, example: torch.Tensor,
              dist: Distributed) -> Optional[Event]:
    if epoch == cfg.decompose_at:
        return decompose_event(model, cfg.methods, example, dist, cfg.first_conv, cfg.exclude)
    if epoch == cfg.reconstruct_at:
        return reconstruct_event(model, dist)
    return None


def _accuracy(model: torch.nn.Module, loader: DataLoader, dist: Distributed, cfg: TrainConfig) -> float:
    correct, total = count_correct(model, loader, dist.device, amp=cfg.amp, channels_last=cfg.channels_last)
    correct, total = dist.sum([correct, total])
    return correct / max(total, 1)


def _log_event(log: Callable[[str], None], epoch: int, event: Event, acc: float, params: int) -> None:
    if event.report is not None:  # names every layer left dense, with the reason
        log(str(event.report))
    log(f"{event.kind} before epoch {epoch + 1}: {len(event.changed)} layer(s) changed, "
        f"{len(event.skipped)} left dense; test acc right after {acc:.2%}, {params:,} params")
    if event.kind == "decompose" and not event.changed:
        log("warning: no layer was decomposed (EVBMF gives rank 0 on barely-trained weights); "
            "decompose later or use --rank evbmf:W / a fraction")


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    event = f"  [{row['event']['kind']}]" if row["event"] else ""
    return (f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
            f"train {row['train_acc']:.2%}  test {row['test_acc']:.2%}  {row['epoch_seconds']:.1f}s  "
            f"total {row['time']:.1f}s  params {row['params']:,}  MACs {row['macs']:,}{event}")
