"""The one module walker and replacer.

``walk`` yields the layers ``decompose_``/``reconstruct_`` act on: leaf modules and whole
factorized layers (it does not descend into a ``FactorizedLayer``: its factor convs are not
candidates for another decomposition). ``swap`` replaces modules by dotted name.
"""
from __future__ import annotations

import re
from typing import Callable, Iterator, Optional, Sequence

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


def exclude_filter(patterns: Sequence[str], model: Optional[nn.Module] = None) -> Optional[FilterFn]:
    """``filter_fn`` leaving dense every layer whose dotted name fully matches one of the
    ``patterns`` (regexes); None without patterns. A bad regex is one clear error; with
    ``model``, so is a regex that matches none of its layers (with weights): an exclusion that
    excludes nothing is a typo, not a request."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise ValueError(f"exclude regex {pattern!r} is invalid: {e}") from None
    if model is not None and compiled:
        names = [name for name, m in walk(model) if any(True for _ in m.parameters())]
        for regex in compiled:
            if not any(regex.fullmatch(name) for name in names):
                shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
                raise ValueError(f"exclude regex {regex.pattern!r} matches no layer of the model (it must match a "
                                 f"whole layer name); its layers: {shown}")
    if not compiled:
        return None
    return lambda module, name: not any(r.fullmatch(name) for r in compiled)
