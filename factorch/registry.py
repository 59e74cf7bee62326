"""The (method type, layer type) -> handler table, filled by the ``@register`` decorator.

A handler looks at one layer and either proposes a factorized layer class with resolved ranks or
says why it skips the layer. It does no decomposition: ``api`` costs the proposal first and
decomposes only what is worth it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

from torch import nn

from factorch.layers.base import FactorizedLayer
from factorch.methods import Method


@dataclass(frozen=True)
class Skip:
    """The method applies to the layer but leaves it dense, for ``reason`` (e.g. rank 0)."""

    reason: str


@dataclass(frozen=True)
class NotApplicable:
    """The method does not apply to this layer (e.g. Tucker-2 on a 1x1 conv): the next method in
    the list is tried; if none applies, ``reason`` is reported."""

    reason: str


@dataclass(frozen=True)
class Proposal:
    """Replace the layer by ``layer_cls`` at ``ranks``. ``options`` fix the structure (both
    ``empty_like`` and ``from_dense`` get them, e.g. TT-conv's order); ``kwargs`` only steer the
    decomposition (``from_dense`` only, e.g. CP restarts)."""

    layer_cls: type[FactorizedLayer]
    ranks: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int | tuple[int, ...]:
        """The ranks as a rank spec: an int for single-rank layers, the tuple otherwise."""
        return self.ranks[0] if len(self.ranks) == 1 else self.ranks

    def build(self, module: nn.Module) -> FactorizedLayer:
        return self.layer_cls.from_dense(module, self.rank, **self.options, **self.kwargs)

    def empty(self, module: nn.Module) -> FactorizedLayer:
        return self.layer_cls.empty_like(module, self.rank, **self.options)


Handler = Callable[[Any, nn.Module], Union[Proposal, Skip, NotApplicable]]
_HANDLERS: dict[tuple[type, type], Handler] = {}


def register(method_type: type[Method], layer_type: type[nn.Module]) -> Callable[[Handler], Handler]:
    """Decorator: ``@register(Tucker2, nn.Conv2d)`` makes the function the handler for that pair."""

    def add(handler: Handler) -> Handler:
        _HANDLERS[(method_type, layer_type)] = handler
        return handler

    return add


def handler_for(method: Method, module: nn.Module) -> Handler | None:
    """The handler for ``type(method)`` and the most specific registered base of ``type(module)``."""
    for layer_type in type(module).__mro__:
        handler = _HANDLERS.get((type(method), layer_type))
        if handler is not None:
            return handler
    return None


def layer_types() -> tuple[type, ...]:
    """Every layer type some method can handle (what ``decompose_`` reports on)."""
    return tuple({layer_type for _, layer_type in _HANDLERS})
