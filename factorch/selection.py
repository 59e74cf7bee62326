"""Layer selection: which layers a decomposition touches and which method(s) each gets.

``Selection``: one method, a list (first that applies wins), or a dict keyed by exact layer name,
``"re:<regex>"`` (full match, first in insertion order) or ``"_default"``; a ``None`` value leaves
the matching layers dense. ``exclude_filter`` / ``layer_filter``: the ``filter_fn`` of
``--exclude`` regexes and of the convention that leaves a model's first conv (1-D, 2-D or 3-D)
dense (Elhoushi et al. 2019, section 4; Kim et al. 2016, section 3).
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Optional, Sequence, Union

from torch import nn

from factorch.layers.conv_spec import CONVS
from factorch.methods import Method
from factorch.surgery import FilterFn, walk

MethodSpec = Union[Method, Sequence[Method]]
Config = Union[MethodSpec, Mapping[str, Optional[MethodSpec]]]


def _as_list(spec: object, where: str) -> Optional[list[Method]]:
    if spec is None:
        return None
    items = [spec] if isinstance(spec, Method) else spec
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(m, Method) for m in items):
        raise ValueError(
            f"{where}: expected a method config (fc.Tucker2(), fc.CP(), fc.SVD(), ...), a non-empty "
            f"list of them, or None; got {spec!r}"
        )
    return list(items)


class Selection:
    """Parsed config; ``methods_for(name)`` gives the methods for a layer, None to leave it dense."""

    def __init__(self, config: Config) -> None:
        self.exact: dict[str, Optional[list[Method]]] = {}
        self.patterns: list[tuple[re.Pattern, Optional[list[Method]]]] = []
        self.default: Optional[list[Method]] = None
        if not isinstance(config, Mapping):
            self.default = _as_list(config, "methods")
            return
        for key, value in config.items():
            if not isinstance(key, str):
                raise ValueError(f"config keys must be layer names, 're:<regex>' or '_default'; got {key!r}")
            methods = _as_list(value, f"config[{key!r}]")
            if key == "_default":
                self.default = methods
            elif key.startswith("re:"):
                try:
                    self.patterns.append((re.compile(key[3:]), methods))
                except re.error as e:
                    raise ValueError(f"config key {key!r} is not a valid regex: {e}") from None
            else:
                self.exact[key] = methods

    def check_names(self, layer_names: Sequence[str]) -> None:
        """Every exact key must name a candidate layer (a typo would silently do nothing)."""
        missing = [k for k in self.exact if k not in set(layer_names)]
        if missing:
            shown = ", ".join(layer_names[:12]) + (", ..." if len(layer_names) > 12 else "")
            raise ValueError(f"config names unknown layer(s) {', '.join(map(repr, missing))}; layers: {shown}")

    def is_explicit(self, name: str) -> bool:
        return name in self.exact

    def methods_for(self, name: str) -> Optional[list[Method]]:
        if name in self.exact:
            return self.exact[name]
        for pattern, methods in self.patterns:
            if pattern.fullmatch(name):
                return methods
        return self.default


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


def layer_filter(first_conv: bool, exclude: Sequence[str], model: nn.Module) -> Callable[[nn.Module, str], bool]:
    """``filter_fn`` for ``decompose_``: drop layers matching an ``exclude`` regex (a regex that
    matches no layer of ``model`` is an error: ``exclude_filter``) and, unless
    ``first_conv``, the model's first conv of any dimensionality, plain or transposed (the paper
    leaves it dense)."""
    excluded = exclude_filter(exclude, model)
    first = None if first_conv else next((n for n, m in walk(model) if isinstance(m, CONVS)), None)

    def keep(module: nn.Module, name: str) -> bool:
        return name != first and (excluded is None or excluded(module, name))

    return keep
