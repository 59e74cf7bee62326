"""What a training event is: an object the run calls at fixed points, with its own settings, its own
checkpoint state and its own spelling.

In the style of llm-compressor's modifiers and torchao's QAT steps: the run loop
(``training/run.py``) calls every event of ``TrainConfig.events`` at the same points and knows
none of them by name. An event class carries everything about itself:

* its **settings** are its dataclass fields (``Decompose(10, methods=(fc.Tucker2(0.25),))``):
  compared when a run resumes, written to the checkpoint's config by ``describe``;
* its **spelling**: a scenario token (``token = "dec"`` spells ``dec@K``; ``takes_epoch = False``
  a bare ``scratch``), the ``factorch train`` flag that adds it (``flag = "--decompose-at"``) and
  the flags of its other settings (``options``, e.g. ADMM's ``--admm-rho``): the scenario parser
  (``training/scenarios.py``) and the CLI read them from the registry (``register``);
* its **hooks**, per run, for each event in order:

    begin(run, first_epoch)    once, before the first epoch this process trains (fresh or resumed),
                               before the run directory exists: bad input leaves nothing behind
    load_state_dict(state)     when resuming: the state ``state_dict`` gave at the checkpoint
    before_epoch(epoch, run)   may change ``run.model`` in place; returns a ``Change`` when it
                               changed the architecture (the loop then rebuilds the optimizer, the
                               DDP wrapper and the counts, and measures the accuracy right after)
    loss(batch)                every batch: a term added to the training loss, or None (``batch``:
                               the inputs, the model's outputs and the targets, ``loop.Batch``)
    after_step()               after every optimizer step
    metrics()                  after the epoch: entries for its row of ``metrics.jsonl``
    summary(metrics)           those entries in short, appended to the epoch's log line
    state_dict()               after the epoch: plain data (``weights_only``-loadable) for the checkpoint

So a new event is one file: its class and ``@register`` -- the loop, the scenario parser, the CLI,
``TrainConfig``, checkpoints and DDP need no change. Under DDP every rank calls the same hooks at
the same points; an event keeps every rank identical (rank 0 decides and broadcasts). Run-time
state lives in private attributes; a run works on fresh copies of the configured events.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from factorch.distributed import Distributed
from factorch.report import Report
from factorch.training.loop import Batch


@dataclass
class Change:
    """A change of architecture: ``kind`` ("decompose" | "reconstruct" | ...), the layers changed,
    the layers left dense with their reasons, (on rank 0, decompositions) the full report, and a
    ``note`` for the log (e.g. a warning)."""

    kind: str
    changed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    report: Optional[Report] = None
    note: Optional[str] = None

    def record(self) -> dict[str, Any]:
        """JSON-able summary for the metrics log."""
        return {"kind": self.kind, "changed": len(self.changed), "layers": self.changed, "skipped": self.skipped}


@dataclass
class RunContext:
    """What the run already decided, for its events: the (unwrapped) model they change in place, an
    example input (batch 1, for MACs), the process group, the log, the training set (calibration
    batches), the memory format, AMP, the global batch size, the epochs, the seed, and how to
    rebuild the model the run started from (``start_model``: its trained weights; None from a
    random init)."""

    model: nn.Module
    example: torch.Tensor
    dist: Distributed
    log: Callable[[str], None]
    train_set: Optional[Dataset] = None
    channels_last: bool = False
    amp: bool = False
    batch_size: int = 1
    epochs: int = 1
    seed: int = 0
    start_model: Optional[Callable[[], nn.Module]] = None

    def teacher(self) -> nn.Module:
        """A frozen copy of the model the run started from (its ``weights``), on the run's device
        and memory format, in eval mode: what a distillation event learns from."""
        if self.start_model is None:
            raise ValueError("distillation needs a trained model to learn from: start the run from its weights "
                             "(--weights FILE, TrainConfig(weights=...))")
        with torch.random.fork_rng(devices=[]):  # a random init before the weights load: the run's draws stay
            model = self.start_model().to(self.example.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    @property
    def process_batch(self) -> int:
        """The training batch of one process (the global batch split over the ranks)."""
        return self.batch_size // self.dist.world

    def calibration(self, batches: int) -> Optional[list[torch.Tensor]]:
        """``batches`` batches of training inputs (no labels) for data-aware factors and ranks, or
        None (0: weight-only). The same examples whenever it is called (a seeded draw), without
        moving the global RNG that orders and augments the training data: a resumed run
        decomposes exactly as an uninterrupted one."""
        if not batches or self.train_set is None:
            return None
        with torch.random.fork_rng(devices=[]):  # augmentation draws from the global RNG: seeded here, restored after
            torch.manual_seed(self.seed + 1)
            order = torch.randperm(len(self.train_set))
            picks = order[:batches * self.batch_size].tolist()
            size = self.batch_size
            return [torch.stack([self.train_set[i][0] for i in picks[k:k + size]]).to(self.example.device)
                    for k in range(0, len(picks), size)]


@dataclass(frozen=True)
class Option:
    """A setting of an event class that the CLI offers: the dataclass ``field`` it sets, its
    ``flag`` and argparse details. ``cli_default``: the value the CLI gives when the flag is absent
    (None: the class's own default); ``switch``: a ``--x/--no-x`` flag."""

    field: str
    flag: str
    help: str
    type: Optional[Callable[[str], Any]] = None
    metavar: Optional[str] = None
    switch: bool = False
    cli_default: Any = None


class Event:
    """Base of every training event: each hook does nothing until a subclass says otherwise.

    ``kind`` names the event in records and logs. Spelling (see the module docstring): ``token``,
    ``takes_epoch``, ``flag`` (with ``flag_help``) and ``options``; an event without a token is
    usable from Python only."""

    kind: ClassVar[str] = ""
    token: ClassVar[str] = ""
    takes_epoch: ClassVar[bool] = True
    flag: ClassVar[str] = ""
    flag_help: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()

    # ---- spelling -------------------------------------------------------------------------------
    @classmethod
    def syntax(cls) -> str:
        """How a scenario spells it: ``dec@K`` or ``scratch``."""
        return f"{cls.token}@K" if cls.takes_epoch else cls.token

    @classmethod
    def cli_options(cls) -> tuple[Option, ...]:
        """Its ``options`` and those of its bases (e.g. the decomposition settings), base first."""
        found: list[Option] = []
        for klass in reversed(cls.__mro__):
            found += [o for o in vars(klass).get("options", ()) if o not in found]
        return tuple(found)

    @classmethod
    def settings(cls) -> set[str]:
        """The names of its settings (its dataclass fields)."""
        return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()

    @classmethod
    def spelled(cls, epoch: Optional[int], settings: dict[str, Any]) -> "Event":
        """The event a token or flag spells: ``epoch`` (for ``takes_epoch``) and, of ``settings``
        (the run's decomposition settings and every given option), those it has; None values
        keep the class's defaults."""
        mine = {k: v for k, v in settings.items() if k in cls.settings() and v is not None}
        return cls(epoch, **mine) if cls.takes_epoch else cls(**mine)

    # ---- when it acts (validated with the run's settings) ---------------------------------------
    def changes(self) -> tuple[tuple[int, str], ...]:
        """``(epoch, kind)`` of each change of architecture it makes (before that 0-based epoch)."""
        return ()

    @property
    def first_epoch(self) -> int:
        """The first epoch before which it acts (a run started from another run's checkpoint must
        not have passed it); by default its first change, or 0."""
        return min((epoch for epoch, _ in self.changes()), default=0)

    @property
    def label(self) -> str:
        """How the user set it, for error messages (e.g. ``decompose_at=3``)."""
        return self.kind

    def validate(self, epochs: int, events: Sequence["Event"]) -> None:
        """Raise one ``ValueError`` if it cannot act in a run of ``epochs`` epochs with these
        ``events`` (itself among them)."""

    def describe(self) -> dict[str, Any]:
        """Plain settings for the checkpoint's config (compared when resuming): the kind, every
        field (``plain``) and the first epoch it acts."""
        return {"kind": self.kind, **{f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)},
                "first_epoch": self.first_epoch}

    # ---- the run's hooks ------------------------------------------------------------------------
    def begin(self, run: RunContext, first_epoch: int) -> None:
        pass

    def before_epoch(self, epoch: int, run: RunContext) -> Optional[Change]:
        return None

    def loss(self, batch: Batch) -> Optional[torch.Tensor]:
        return None

    def after_step(self) -> None:
        pass

    def metrics(self) -> dict[str, Any]:
        return {}

    def summary(self, metrics: dict[str, Any]) -> str:
        return ""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def plain(value: Any) -> Any:
    """A setting as JSON-able, ``weights_only``-loadable data: tuples as lists, method configs and
    other objects by their ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return repr(value)


EVENTS: dict[str, type[Event]] = {}  # token -> class, in registration order (the CLI's and the parser's order)


def register(cls: type[Event]) -> type[Event]:
    """Class decorator: make an event class spellable (its ``token`` in scenarios, its ``flag`` and
    ``options`` in the CLI). A token registered twice is an error."""
    if not cls.token:
        raise ValueError(f"{cls.__name__} has no token: only events with a scenario token are registered")
    if EVENTS.get(cls.token, cls) is not cls:
        raise ValueError(f"event token {cls.token!r} is taken by {EVENTS[cls.token].__name__}")
    EVENTS[cls.token] = cls
    return cls
