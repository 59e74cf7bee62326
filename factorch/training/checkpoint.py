"""A run's checkpoint: everything needed to continue it exactly, loadable with ``weights_only``.

Written atomically (``io.atomic_save``) after every finished epoch, so a run killed at any moment
(even ``kill -9`` in the middle of an epoch) resumes from the last finished one. It holds plain
data only: the run config, the factorization spec (``io.factorization_spec``; a resumed run
rebuilds the factorized structure with ``io.apply_spec``), model/optimizer/GradScaler state, the
metrics history, every event's state (``Event.state_dict``, in the run's event order; e.g.
ADMM's Z and U), and every rank's RNG states (torch, CUDA, numpy, ``random``) so data order,
augmentation and dropout replay identically. The epoch's data order is a function of the seed
and the epoch (``DistributedSampler.set_epoch``), so the sampler needs no state.
"""
from __future__ import annotations

import os
import random
from typing import Any, Optional

import torch
from torch import nn

from factorch.files import atomic_save
from factorch.io import CheckpointError, factorization_spec, read_checkpoint

FORMAT, VERSION = "factorch-run", 1


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors, ints and tuples (``weights_only``-loadable)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def save_run(path: str | os.PathLike, *, config: dict[str, Any], epoch: int, model: nn.Module,
             optimizer: torch.optim.Optimizer, scaler: Any, history: list[dict[str, Any]],
             rng: list[dict[str, Any]], events: Optional[list[dict[str, Any]]] = None) -> None:
    """Write the state after ``epoch`` finished epochs (``rng``: one entry per rank; ``events``:
    each event's ``state_dict()``)."""
    atomic_save({
        "format": FORMAT, "version": VERSION, "config": config, "epoch": epoch,
        "arch": getattr(model, "factorch_arch", None), "factorized": factorization_spec(model),
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "history": history, "rng": rng, "events": list(events or []),
    }, path)


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    """Read a run checkpoint; a file of another kind is one clear ``CheckpointError``."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a factorch training checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has run checkpoint version {ckpt.get('version')!r}; this factorch reads {VERSION}")
    return ckpt


def config_mismatch(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...]) -> Optional[str]:
    """A readable list of settings that differ (None if the run may continue): each by its path,
    e.g. ``lr: checkpoint 0.1, now 0.5`` or ``events[0].rho: checkpoint 0.001, now 0.01``."""
    diffs = [d for k in sorted(set(saved) | set(current)) if k not in ignore
             for d in _differences(k, saved.get(k), current.get(k))]
    return "; ".join(diffs) or None


def _differences(path: str, saved: Any, current: Any) -> list[str]:
    """Where ``saved`` and ``current`` differ: dicts key by key, lists of one length item by item."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [d for k in list(dict.fromkeys([*saved, *current]))
                for d in _differences(f"{path}.{k}", saved.get(k), current.get(k))]
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current) and \
            any(isinstance(v, dict) for v in saved):
        return [d for i, (a, b) in enumerate(zip(saved, current)) for d in _differences(f"{path}[{i}]", a, b)]
    return [] if saved == current else [f"{path}: checkpoint {saved!r}, now {current!r}"]
