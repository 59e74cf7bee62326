"""Progress bars on a terminal (tqdm, when installed), nothing otherwise."""
from __future__ import annotations

import sys
from typing import Iterable, Optional, TypeVar

T = TypeVar("T")


def track(items: Iterable[T], desc: str, total: Optional[int] = None) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar when stderr is a terminal and tqdm imports."""
    if not sys.stderr.isatty():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, total=total, leave=False)
