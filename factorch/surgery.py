"""The one module walker and replacer (which layers get which method: ``factorch.selection``).

``walk`` yields the layers ``decompose_``/``reconstruct_`` act on: leaf modules, whole
factorized layers (it does not descend into a ``FactorizedLayer``: its factor convs are not
candidates for another decomposition) and the layers taken whole (``WHOLE``). ``swap`` replaces
modules by dotted name.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

from torch import nn

from factorch.fused import turn_off
from factorch.layers.base import FactorizedLayer

FilterFn = Callable[[nn.Module, str], bool]

# Layers with children that are one layer: ``nn.MultiheadAttention`` reads its ``out_proj``'s
# weight itself and never calls it, so the attention is decomposed (and reported) as a whole.
WHOLE: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)


def walk(model: nn.Module, filter_fn: Optional[FilterFn] = None, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(dotted_name, module)`` for leaf modules, factorized layers and ``WHOLE`` layers,
    depth first."""
    for child_name, child in model.named_children():
        name = f"{prefix}.{child_name}" if prefix else child_name
        if isinstance(child, (FactorizedLayer, *WHOLE)) or not any(True for _ in child.children()):
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
    failure never leaves the model half-changed. A factorized layer turns the fused path of the
    torch modules around it off (``factorch.fused``): they would hand its dense weight, which it
    does not have, to a fused kernel."""
    for name, new in replacements.items():
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, new)
        if isinstance(new, FactorizedLayer):
            parts = name.split(".")
            turn_off(model.get_submodule(".".join(parts[:i])) for i in range(len(parts)))
