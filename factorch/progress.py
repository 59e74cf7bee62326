"""Progress on a terminal (stderr), nothing otherwise: logs and CI output stay clean.

``track(items, desc, total)`` draws a tqdm bar (when tqdm is installed) over items of about equal
cost: training steps, sweep points. ``track(items, desc, work=...)`` is for items of very
unequal cost, the layers of ``fc.decompose_``: ``work(item)`` gives a ``Step`` (what the item is,
with its route, and the seconds a cost model expects it to take on one thread), or None for an
item that costs nothing (neither shown nor counted). One line, redrawn every ``REFRESH`` seconds
while an item runs, so a layer that takes minutes shows that it is working::

    decompose: layer 3 of 12, fc1 (randomized SVD, rank 4096): 1 min 10 s of ~6 min; about 9 min left

Time left: the estimates of the items not finished, scaled by how long the finished ones took
against their estimates (before any finished: the estimates over the threads torch uses); the
running item counts with its scaled estimate less its elapsed time. A ``track`` inside another
one (a sweep's points, each decomposing a layer) draws nothing.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")

REFRESH = 1.0  # seconds between redraws of a running item's line (0: only when an item starts)
clock: Callable[[], float] = time.monotonic  # what "elapsed" is read from (tests put a fake clock here)
_active: list["_Meter"] = []  # the tracks being iterated, outermost first


@dataclass(frozen=True)
class Step:
    """One item of a weighted ``track``: ``label`` (e.g. ``fc1 (randomized SVD, rank 4096)``) and
    ``seconds``, its estimated time on one thread (a cost model's, e.g. ``RankSpace.work``)."""

    label: str
    seconds: float


def track(items: Iterable[T], desc: str, total: Optional[int] = None, *,
          work: Optional[Callable[[T], Optional[Step]]] = None, unit: str = "layer") -> Iterable[T]:
    """``items``, with progress drawn on stderr when it is a terminal (see the module docstring):
    a tqdm bar, or with ``work`` the weighted line ("``unit`` i of n")."""
    if not sys.stderr.isatty() or _active:
        return items
    if work is None:
        try:
            from tqdm import tqdm
        except ImportError:
            return items
        return _nested(tqdm(items, desc=desc, total=total, leave=False), None)
    items = list(items)
    steps = [work(item) for item in items]
    return _nested(items, _Meter(desc, unit, steps, sys.stderr))


def _nested(items: Iterable[T], meter: Optional["_Meter"]) -> Iterator[T]:
    """Iterate ``items`` as the active track (inner tracks stay silent), driving ``meter``."""
    _active.append(meter or _Meter("", "", [], None))
    try:
        for i, item in enumerate(items):
            if meter is not None:
                meter.start(i)
            yield item
            if meter is not None:
                meter.finish(i)
    finally:
        _active.pop()
        if meter is not None:
            meter.close()


def echo(line: str) -> None:
    """Print ``line`` to stdout at once; on a terminal with progress drawn, above it (tqdm's bar:
    ``tqdm.write``; a weighted line is cleared, then redrawn)."""
    meter = _active[-1] if _active else None
    if meter is not None and meter.stream is not None:
        with meter.lock:
            meter.clear()
            print(line, flush=True)
            meter.draw()
        return
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


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``2 h 5 min``: a time for a progress line."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s < 600 and s % 60 else "")
    return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")


class _Meter:
    """The weighted line of one ``track``: which step runs, since when, and what is left."""

    def __init__(self, desc: str, unit: str, steps: list[Optional[Step]], stream) -> None:
        self.desc, self.unit, self.steps, self.stream = desc, unit, steps, stream
        self.count = sum(s is not None for s in steps)
        self.done_estimate = self.done_time = 0.0
        self.current: Optional[int] = None
        self.number = 0  # 1-based position of the current step among the counted ones
        self.started = 0.0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ticker: Optional[threading.Thread] = None

    def scale(self) -> float:
        """Seconds per estimated second: measured on the finished steps, else 1 / torch's threads."""
        if self.done_estimate > 0.0 and self.done_time > 0.0:
            return self.done_time / self.done_estimate
        try:
            import torch
            return 1.0 / max(torch.get_num_threads(), 1)
        except ImportError:  # pragma: no cover - torch is a dependency
            return 1.0

    def line(self) -> str:
        """The progress line now (empty between steps)."""
        if self.current is None:
            return ""
        step, scale = self.steps[self.current], self.scale()
        elapsed = clock() - self.started
        expected = step.seconds * scale
        later = sum(s.seconds for s in self.steps[self.current + 1:] if s is not None) * scale
        left = max(expected - elapsed, 0.0) + later
        return (f"{self.desc}: {self.unit} {self.number} of {self.count}, {step.label}: "
                f"{duration(elapsed)} of ~{duration(expected)}; about {duration(left)} left")

    def draw(self) -> None:
        text = self.line()
        if text:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r\x1b[K")
        self.stream.flush()

    def start(self, i: int) -> None:
        if self.steps[i] is None:
            return
        with self.lock:
            self.current, self.started = i, clock()
            self.number += 1
            self.draw()
        if REFRESH > 0 and self.ticker is None:
            self.ticker = threading.Thread(target=self._tick, daemon=True)
            self.ticker.start()

    def finish(self, i: int) -> None:
        if self.steps[i] is None:
            return
        with self.lock:
            self.done_time += clock() - self.started
            self.done_estimate += self.steps[i].seconds
            self.current = None

    def close(self) -> None:
        self.stop.set()
        if self.ticker is not None:
            self.ticker.join()
        if self.number:
            with self.lock:
                self.clear()

    def _tick(self) -> None:
        while not self.stop.wait(REFRESH):
            with self.lock:
                self.draw()
