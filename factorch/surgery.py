"""The one module walker and replacer (which layers get which method: ``factorch.selection``).

``walk`` yields the layers ``decompose_``/``reconstruct_`` act on: leaf modules and whole
factorized layers (it does not descend into a ``FactorizedLayer``: its factor convs are not
candidates for another decomposition). ``swap`` replaces modules by dotted name.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

from torch import nn

from factorch.layers.base import FactorizedLayer

FilterFn = Callable[[nn.Module, str], bool]


def walk(model: nn.Module, filter_fn: Optional[FilterFn] = None, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(dotted_name, module)`` for leaf modules and factorized layers, depth first."""
    for child_name, child in model.named_children():
        name = f"{prefix}.{child_name}" if prefix else child_name
        if isinstance(child, FactorizedLayer) or not any(True for _ in child.children()):
            if filter_fn is None or filter_fn(child, name):
                yield name, child
        else:
            yield from walk(child, filter_fn, name)


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted ``name``; ``ValueError`` if there is none."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the model has no layer named {name!r}") from None


def swap(model: nn.Module, replacements: dict[str, nn.Module]) -> None:
    """Put each new module at its dotted name. Callers build every replacement first, so a
    failure never leaves the model half-changed."""
    for name, new in replacements.items():
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, new)
