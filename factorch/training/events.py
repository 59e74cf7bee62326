"""The two architecture changes of a run: decompose (at epoch k) and reconstruct (at epoch m).

Under DDP the decomposition is computed once, on rank 0: the other ranks receive its
factorization spec, build the same (empty) structure with ``io.apply_spec`` and get every
parameter and buffer from rank 0, so all ranks end with identical weights whatever they held.
Every layer left dense is named with its reason in the event record (EVBMF gives rank 0 on
barely-trained weights, methods.md 2.1 issue 2).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from factorch.api import decompose_, reconstruct_
from factorch.io import apply_spec, factorization_spec
from factorch.layers.base import FactorizedLayer
from factorch.methods import Method
from factorch.report import Report
from factorch.surgery import walk
from factorch.training.distributed import Distributed


@dataclass
class Event:
    """What happened: ``kind`` ("decompose" | "reconstruct"), the layers changed, the layers left
    dense with their reasons, and (on rank 0, decompositions) the full report."""

    kind: str
    changed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    report: Optional[Report] = None

    def record(self) -> dict[str, Any]:
        """JSON-able summary for the metrics log."""
        return {"kind": self.kind, "changed": len(self.changed), "layers": self.changed, "skipped": self.skipped}


def layer_filter(first_conv: bool, exclude: Sequence[str], model: nn.Module) -> Callable[[nn.Module, str], bool]:
    """``filter_fn`` for ``decompose_``: drop layers matching an ``exclude`` regex and, unless
    ``first_conv``, the model's first Conv2d (the paper leaves it dense)."""
    patterns = [re.compile(p) for p in exclude]
    first = None if first_conv else next((n for n, m in walk(model) if isinstance(m, nn.Conv2d)), None)

    def keep(module: nn.Module, name: str) -> bool:
        return name != first and not any(p.fullmatch(name) for p in patterns)

    return keep


def decompose_event(model: nn.Module, methods: Sequence[Method], example_input: torch.Tensor,
                    dist: Distributed, first_conv: bool = False, exclude: Sequence[str] = ()) -> Event:
    """``decompose_`` the (unwrapped) ``model`` in place, on rank 0, and make every rank identical."""
    report, spec = None, None
    if dist.is_main:
        keep = layer_filter(first_conv, exclude, model)
        report = decompose_(model, list(methods), filter_fn=keep, example_input=example_input)
        spec = factorization_spec(model)
    spec = dist.broadcast_object(spec)
    if not dist.is_main:
        have = {name for name, m in walk(model) if isinstance(m, FactorizedLayer)}
        apply_spec(model, [entry for entry in spec if entry["name"] not in have])
    dist.broadcast_model(model)
    skipped = {r.name: r.skipped for r in report.skipped} if report is not None else {}
    changed = [r.name for r in report.decomposed] if report is not None else []
    skipped, changed = dist.broadcast_object((skipped, changed))
    return Event("decompose", changed, skipped, report)


def reconstruct_event(model: nn.Module, dist: Distributed) -> Event:
    """``reconstruct_`` every factorized layer (lossless), identical on every rank."""
    names = reconstruct_(model)
    dist.broadcast_model(model)
    return Event("reconstruct", names)
