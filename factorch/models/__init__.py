"""Model registry: ``create(name, num_classes, in_channels)`` and ``list_models()``.

Every registered builder takes ``num_classes`` and ``in_channels``. ``create`` records the
arguments on the model (``model.factorch_arch``) so ``factorch.save`` can store the architecture
by name and ``factorch.load`` can rebuild it without executing pickled code.
"""
from __future__ import annotations

from torch import nn

from factorch.models.registry import MODELS, ModelEntry, register_model


def list_models() -> list[str]:
    _load_builtin()
    return sorted(MODELS)


def entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; ``ValueError`` lists the known names."""
    _load_builtin()
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return MODELS[name]


def create(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A fresh, randomly initialised model from the registry."""
    e = entry(name)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    model = e.builder(num_classes=num_classes, in_channels=in_channels)
    model.factorch_arch = {"name": name, "num_classes": num_classes, "in_channels": in_channels}
    return model


def input_shape(name: str, in_channels: int = 3) -> tuple[int, int, int]:
    """(C, H, W) of one example for model ``name``."""
    return (in_channels, *entry(name).input_size)


def _load_builtin() -> None:
    # imported on first use: registering is a side effect of these modules
    from factorch.models import densenet, mobilenet, resnet, resnet_imagenet, small, vgg, vgg_imagenet  # noqa: F401


__all__ = ["create", "entry", "input_shape", "list_models", "register_model"]
