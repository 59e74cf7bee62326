"""Which method(s) each layer gets: one method, a list (first that applies wins), or a dict keyed
by exact layer name, ``"re:<regex>"`` (full match, first in insertion order) or ``"_default"``;
a ``None`` value leaves the matching layers dense."""
from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence, Union

from factorch.methods import Method

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
