"""The model registry's table: ``register_model`` (a decorator the model files use) and the entries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int]  # default (H, W) of one example
    description: str


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, input_size: tuple[int, int] = (32, 32), description: str = "") -> Callable:
    """Decorator registering ``builder(num_classes, in_channels) -> nn.Module`` under ``name``."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = ModelEntry(name, builder, input_size, description or (builder.__doc__ or "").strip())
        return builder

    return add
