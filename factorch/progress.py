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


def echo(line: str) -> None:
    """Print ``line`` to stdout at once; on a terminal with a progress bar drawn, above the bar
    (``tqdm.write``) instead of through it."""
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()
            return
    print(line, flush=True)
