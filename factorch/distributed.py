"""Single process or a ``torch.distributed`` group: one object that knows the rank and does the
collectives, for the training loop, its events and ``fc.ADMM`` alike.

``torchrun --nproc_per_node=N -m factorch train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
``Distributed.from_env`` joins that group (NCCL on CUDA, Gloo on the CPU); ``Distributed.current``
describes a group the user's own script initialised. With one process every collective is the
identity, so callers have a single code path. A worker exits when its launcher dies
(``exit_with_parent``): a ``kill -9`` of torchrun must not leave ranks writing into the run.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when available (this process's GPU under torchrun), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def is_main_process() -> bool:
    """Whether this process is rank 0 (or alone): the one that prints a command's summary."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: str = "auto") -> "Distributed":
        """Join the process group torchrun describes in the environment (if any)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = pick_device(device, local_rank)
        if world <= 1:
            return cls(0, 1, dev)
        exit_with_parent()
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), dev, owns)

    @classmethod
    def current(cls) -> "Distributed":
        """The default process group as it is (none: a single process); nothing is initialised.
        Collectives of an NCCL group run on this process's current GPU."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return cls()
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` (rebuilt after every change of architecture), or ``model`` itself."""
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    @torch.no_grad()
    def broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Copy rank 0's values into every rank's ``tensors`` (same shapes), in place."""
        if self.world == 1:
            return
        for t in tensors:
            buf = t.detach().contiguous()  # collectives want dense, contiguous tensors
            dist.broadcast(buf, src=0)
            if buf.data_ptr() != t.data_ptr():
                t.copy_(buf)

    def broadcast_model(self, model: nn.Module, buffers_only: bool = False) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``model`` (same structure).
        ``buffers_only``: the buffers alone, e.g. batch-norm statistics, which DDP keeps in step
        at the start of each forward but every rank then updates with its own batch."""
        self.broadcast_tensors(([] if buffers_only else list(model.parameters())) + list(model.buffers()))

    @contextlib.contextmanager
    def lock(self, path: str | os.PathLike) -> Iterator[None]:
        """Hold the run directory ``path`` (``factorch.files.lock_dir``) while the ranks write into it:
        rank 0 takes the lock (it alone writes) and every rank learns the outcome, so a directory
        another run holds is the same ``DirectoryLocked`` on every rank (no rank left waiting)."""
        from factorch.files import DirectoryLocked, lock_dir

        with contextlib.ExitStack() as stack:
            refusal = None
            if self.is_main:
                try:
                    stack.enter_context(lock_dir(path))
                except DirectoryLocked as e:
                    refusal = str(e)
            refusal = self.broadcast_object(refusal)
            if refusal is not None:
                raise DirectoryLocked(refusal)
            yield

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            # wait for every rank first: a rank tearing down Gloo while another still talks to it
            # can abort the other (seen under load)
            dist.barrier()
            dist.destroy_process_group()


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent() -> None:
    """End this process when the process that started it (torchrun's agent) dies, however it
    dies: on Linux the kernel sends SIGKILL (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon
    thread watches the parent pid. A parent already gone before the call ends the process now."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent:  # it died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass  # no usable libc: watch instead

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="factorch-exit-with-parent", daemon=True).start()
