"""One training run, epoch by epoch, calling its events (``training/events``) at fixed points.

Train from scratch; every event acts when it says: ``Decompose`` (Elhoushi et al. 2019: Tucker-2,
EVBMF ranks by default) and ``Reconstruct``, ``ADMMPhase`` (Yin et al. 2021: a penalty on the loss,
a decomposition at its end), ``FromScratch``, or any registered event.
After a change of architecture the optimizer is handed over and training goes on with the same
LR schedule. After every epoch: a JSON line in ``RUN_DIR/metrics.jsonl`` (with each event's
metrics) and an atomic checkpoint ``RUN_DIR/checkpoint.pt`` (with each event's state); at the end
the final model as a factorch checkpoint ``RUN_DIR/model.pt`` (``factorch count RUN_DIR/model.pt``).
The loop knows no event by name.

Times: ``train_seconds`` is the training pass, ``event_seconds`` the events' work before it
(a decomposition, a reconstruction, an ADMM update), ``time`` their running total (the training
time of the paper's tables; test evaluation is measured apart, as ``eval_seconds``). A resumed
run continues the total from its checkpoint: the part of an epoch lost to a kill is not counted.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from factorch import data as fdata
from factorch.measure.count import count
from factorch.models.spec import ModelSpec
from factorch.files import LOCK_FILE, DirectoryLocked, append_text, atomic_write_text
from factorch.io import CheckpointError, apply_spec, load_into, load_weights, save
from factorch.training.checkpoint import (config_mismatch, load_run, rng_state, save_run, seed_everything,
                                          set_rng_state)
from factorch.training.config import RUNTIME_ONLY, TrainConfig, first_event_epoch, upgrade_config
from factorch.distributed import Distributed
from factorch.training.events import Change, Event, RunContext
from factorch.training.handoff import make_optimizer, rebuild_optimizer
from factorch.training.loop import (Batch, TrainingDiverged, count_correct, to_memory_format, train_epoch,
                                    uses_channels_last)


def print_line(line: str) -> None:
    """The default log: stdout, flushed per line so piped or redirected logs follow the run."""
    print(line, flush=True)


CHECKPOINT, METRICS, FINAL = "checkpoint.pt", "metrics.jsonl", "model.pt"
# settings a run started from another run's checkpoint may change (see ``train(start_from=...)``)
EXTENDABLE = ("epochs", "events")


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
    out = Path(out_dir)
    existed = out.exists()
    try:
        with contextlib.ExitStack() as hold:  # the run directory's lock, taken once the input is checked
            return _train(cfg, out, resume, start_from, log if dist.is_main else (lambda s: None), dist, hold)
    except DirectoryLocked:
        raise  # another process's run: nothing of it is ours to remove
    except BaseException:
        if dist.is_main:
            _remove_unstarted(out, existed)
        raise
    finally:
        dist.close()


def _remove_unstarted(out: Path, existed: bool) -> None:
    """After a run failed before its first checkpoint, remove what it wrote (its empty metrics log,
    its lock file, the directory if it made it): a failed run leaves nothing behind. A run with a
    checkpoint stays, to be resumed."""
    if (out / CHECKPOINT).exists() or not out.is_dir():
        return
    for name in (METRICS, LOCK_FILE):
        (out / name).unlink(missing_ok=True)
    if not existed and not any(out.iterdir()):
        out.rmdir()


def _train(cfg: TrainConfig, out: Path, resume: bool, start_from: Optional[str | os.PathLike],
           log: Callable[[str], None], dist: Distributed, hold: contextlib.ExitStack) -> list[dict[str, Any]]:
    ckpt_path, metrics_path = out / CHECKPOINT, out / METRICS
    state, source, same_run = _initial_state(cfg, ckpt_path, resume, start_from)
    if dist.world > 1 and cfg.batch_size % dist.world:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by the {dist.world} processes")
    seed_everything(cfg.seed)
    meta = fdata.info(cfg.dataset, cfg.data_dir)
    train_set = fdata.load(cfg.dataset, cfg.data_dir, train=True, subset=cfg.subset, augment=cfg.augment, seed=cfg.seed)
    test_set = fdata.load(cfg.dataset, cfg.data_dir, train=False, subset=cfg.subset, seed=cfg.seed)
    device = dist.device
    spec = ModelSpec.parse(cfg.model, cfg.model_args)

    def start_model() -> torch.nn.Module:  # the model the run starts from: a random init, or the given weights
        model = spec.build(meta.num_classes, meta.in_channels)
        if not cfg.weights:
            return model
        try:
            return load_into(model, cfg.weights)[0]
        except CheckpointError as e:  # e.g. a head for another number of classes: say what it was built for
            raise CheckpointError(f"{e} (the model is built for {cfg.dataset}: {meta.num_classes} classes, "
                                  f"{meta.in_channels} input channel(s))") from None

    model = start_model().to(device)  # weights that do not fit fail here, before anything is written
    example = torch.zeros((1, meta.in_channels, *_input_size(test_set, meta)), device=device)
    history: list[dict[str, Any]] = []
    if state is not None:
        if cfg.weights:  # the state's structure: a fresh build of the architecture, not the start's
            model = spec.build(meta.num_classes, meta.in_channels).to(device)
        apply_spec(model, state["factorized"])
        load_weights(model, state["model"], source)
        history = list(state["history"])
    channels_last = uses_channels_last(cfg.channels_last, model, device)  # the rule: channels_last for conv models
    to_memory_format(model, channels_last)
    events = cfg.build_events()
    run = RunContext(model, example, dist, log, train_set, channels_last=channels_last, amp=cfg.amp,
                     batch_size=cfg.batch_size, epochs=cfg.epochs, seed=cfg.seed,
                     start_model=start_model if cfg.weights else None)
    for event in events:  # before the directory exists: an event's bad input leaves nothing behind
        event.begin(run, len(history))
    if same_run:
        _load_event_states(events, state, source)
    # after the data, the model and the events: bad input leaves no directory behind; a directory
    # another run writes into is refused (DirectoryLocked), and so is a run that finished there meanwhile
    hold.enter_context(dist.lock(out))
    _refuse_existing_run(ckpt_path, resume)
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
        changes = [c for c in (event.before_epoch(epoch, run) for event in events) if c is not None]
        event_seconds = time.perf_counter() - t0
        event_acc = None
        if changes:  # a new architecture: new parameters for the optimizer, DDP and the counts
            to_memory_format(model, channels_last)  # the new factor layers too
            optimizer = rebuild_optimizer(optimizer, model)
            net = dist.wrap(model)
            counts = count(model, example)
            event_acc = _accuracy(model, test_loader, dist, cfg, channels_last)
            for change in changes:
                _log_change(log, epoch, change, event_acc, counts.params)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(epoch)
        sampler.set_epoch(epoch)
        stats = train_epoch(net, loader, optimizer, device, scaler, amp=cfg.amp, channels_last=channels_last,
                            desc=f"epoch {epoch + 1}/{cfg.epochs}", extra_loss=lambda batch: _loss_terms(events, batch),
                            after_step=lambda: [event.after_step() for event in events],
                            stop_on_nonfinite=dist.world == 1)
        _check_finite(stats, epoch, dist, ckpt_path)
        loss_sum, correct, samples = dist.sum([stats["loss"] * stats["samples"], stats["acc"] * stats["samples"],
                                               stats["samples"]])
        t1 = time.perf_counter()
        test_acc = _accuracy(model, test_loader, dist, cfg, channels_last)
        elapsed += event_seconds + stats["seconds"]
        row = {"epoch": epoch + 1, "lr": schedule.lr_at(epoch), "train_loss": loss_sum / max(samples, 1),
               "train_acc": correct / max(samples, 1), "test_acc": test_acc,
               "epoch_seconds": event_seconds + stats["seconds"], "train_seconds": stats["seconds"],
               "event_seconds": event_seconds, "eval_seconds": time.perf_counter() - t1,
               "time": elapsed, "params": counts.params, "macs": counts.macs,
               "event": changes[0].record() if changes else None, "event_test_acc": event_acc}
        extra = [event.metrics() for event in events]
        for entries in extra:
            row.update(entries)
        history.append(row)
        rngs = dist.gather_object(rng_state())
        if dist.is_main:
            save_run(ckpt_path, config=cfg.as_dict(), epoch=epoch + 1, model=model, optimizer=optimizer,
                     scaler=scaler, history=history, rng=rngs, events=[event.state_dict() for event in events])
            append_text(json.dumps(row) + "\n", metrics_path)
        dist.barrier()
        log(_epoch_line(row, cfg.epochs) + "".join(event.summary(e) for event, e in zip(events, extra)))
    if dist.is_main:
        save(model, out / FINAL, meta={"input_shape": list(example.shape[1:]), "config": cfg.as_dict()})
    return history


def _check_finite(stats: dict[str, Any], epoch: int, dist: Distributed, ckpt_path: Path) -> None:
    """Stop the run (every rank) at the first non-finite training loss of any rank, naming the
    epoch and step; the checkpoint of the last finished epoch is kept, nothing of this one is
    written."""
    steps = dist.gather_object(stats["bad_step"])
    bad = [(rank, s) for rank, s in enumerate(steps) if s]
    if not bad:
        return
    rank, step = bad[0]
    where = f" on rank {rank}" if dist.world > 1 else ""
    kept = f"{ckpt_path} (after epoch {epoch}) is kept" if epoch else "no epoch finished, so no checkpoint was written"
    raise TrainingDiverged(f"the training loss is NaN or infinite at epoch {epoch + 1}, step {step}{where}: training "
                           f"stopped; {kept} (try a lower --lr or other ranks)")


def _loss_terms(events: tuple[Event, ...], batch: Batch) -> Optional[torch.Tensor]:
    """The sum of the events' loss terms for this batch (None when no event adds one)."""
    terms = [t for t in (event.loss(batch) for event in events) if t is not None]
    return sum(terms[1:], terms[0]) if terms else None


def _acted(events: list[dict[str, Any]], epochs_done: int) -> list[int]:
    """The indices of the events (``describe()`` dicts) that acted within ``epochs_done`` epochs."""
    return [i for i, e in enumerate(events) if e["first_epoch"] < epochs_done]


def _load_event_states(events: tuple[Event, ...], state: dict[str, Any], source: str) -> None:
    """Each event that acted before the checkpoint continues from its saved state (they pair up
    in order: ``_initial_state`` checked they are the same); the others start fresh."""
    described = upgrade_config(state["config"])["events"]
    saved = state.get("events")
    if saved is None:  # a checkpoint written before events had state
        saved = [{} for _ in described]
    if len(saved) != len(described):
        raise CheckpointError(f"{source!r} holds the state of {len(saved)} event(s) for {len(described)}")
    states = [saved[i] for i in _acted(described, state["epoch"])]
    for event in events:
        if event.first_epoch < state["epoch"]:
            event.load_state_dict(states.pop(0))


def _initial_state(cfg: TrainConfig, ckpt_path: Path, resume: bool, start_from: Optional[str | os.PathLike]
                   ) -> tuple[Optional[dict[str, Any]], str, bool]:
    """The checkpoint to continue from (validated against ``cfg``), its path, and whether it is
    this run's own (a resume: the events' states continue too); None for a fresh run."""
    _refuse_existing_run(ckpt_path, resume)
    current = cfg.as_dict()
    if resume and ckpt_path.exists():
        state = load_run(ckpt_path)
        saved, done = upgrade_config(state["config"]), state["epoch"]
        # an event that has not acted yet may be given other settings (e.g. a rank corrected after
        # a run stopped on it); the ones that acted must be the same
        acted = {"events": [saved["events"][i] for i in _acted(saved["events"], done)]}
        now = {"events": [current["events"][i] for i in _acted(current["events"], done)]}
        diff = config_mismatch(saved, current, RUNTIME_ONLY + ("events",)) or config_mismatch(acted, now, ())
        if diff:
            raise CheckpointError(f"cannot resume {ckpt_path.parent}: settings differ ({diff})")
        return state, str(ckpt_path), True
    if start_from is None:
        return None, "", False
    state = load_run(start_from)
    saved = upgrade_config(state["config"])
    diff = config_mismatch(saved, current, RUNTIME_ONLY + EXTENDABLE + ("schedule_epochs",))
    if diff or (saved.get("schedule_epochs") or saved["epochs"]) != (cfg.schedule_epochs or cfg.epochs):
        raise CheckpointError(f"cannot start from {start_from}: settings differ ({diff or 'LR schedule length'})")
    own_first, first = first_event_epoch(saved), first_event_epoch(current)
    passed_own = own_first is not None and own_first < state["epoch"]  # no longer the dense trajectory
    if passed_own or state["epoch"] > (cfg.epochs if first is None else first):
        raise CheckpointError(f"cannot start from {start_from}: it has passed this run's first event")
    return state, str(start_from), False


def _refuse_existing_run(ckpt_path: Path, resume: bool) -> None:
    if ckpt_path.exists() and not resume:
        raise ValueError(f"{ckpt_path.parent} already holds a run; pass --resume to continue it or choose another --out")


def _input_size(dataset: Any, meta: fdata.DatasetInfo) -> tuple[int, int]:
    """(H, W) of the examples (the test split: no augmentation draws from the RNG)."""
    return tuple(dataset[0][0].shape[-2:]) if len(dataset) else meta.input_size


def _accuracy(model: torch.nn.Module, loader: DataLoader, dist: Distributed, cfg: TrainConfig,
              channels_last: bool) -> float:
    """Test accuracy of the model rank 0 saves: its batch-norm statistics on every rank, each rank
    scoring its disjoint shard (no padding), the counts summed."""
    dist.broadcast_model(model, buffers_only=True)
    correct, total = count_correct(model, loader, dist.device, amp=cfg.amp, channels_last=channels_last)
    correct, total = dist.sum([correct, total])
    return correct / max(total, 1)


def _log_change(log: Callable[[str], None], epoch: int, change: Change, acc: float, params: int) -> None:
    if change.report is not None:  # names every layer left dense, with the reason
        log(str(change.report))
    log(f"{change.kind} before epoch {epoch + 1}: {len(change.changed)} layer(s) changed, "
        f"{len(change.skipped)} left dense; test acc right after {acc:.2%}, {params:,} params")
    if change.note:
        log(change.note)


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    event = f"  [{row['event']['kind']}]" if row["event"] else ""
    return (f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
            f"train {row['train_acc']:.2%}  test {row['test_acc']:.2%}  {row['epoch_seconds']:.1f}s  "
            f"total {row['time']:.1f}s  params {row['params']:,}  MACs {row['macs']:,}{event}")
