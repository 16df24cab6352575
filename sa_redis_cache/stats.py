"""Counters of what the cache did, process-wide and per block of code.

``QueryCache.stats()`` reads the process-wide counters; :func:`record` counts only what happens
inside a ``with`` block in the current thread or task (contextvars), which is what a test or a
per-request header needs.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, Literal

Event = Literal["hits", "near_hits", "misses", "stores", "bypasses", "invalidations", "errors"]
EVENTS: Final[tuple[Event, ...]] = (
    "hits",
    "near_hits",
    "misses",
    "stores",
    "bypasses",
    "invalidations",
    "errors",
)
"""``near_hits`` counts the hits the near cache served (they are counted in ``hits`` too)."""


class Counts(dict[str, int]):
    """A dict of event -> count, with attribute access (``counts.hits``)."""

    def __init__(self) -> None:
        super().__init__(dict.fromkeys(EVENTS, 0))

    def __getattr__(self, name: str) -> int:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


_recorders: contextvars.ContextVar[tuple[Counts, ...]] = contextvars.ContextVar(
    "sa_redis_cache_recorders", default=()
)


class Stats:
    def __init__(self) -> None:
        self._counts = Counts()
        self._lock = threading.Lock()

    def count(self, event: Event, amount: int = 1) -> None:
        with self._lock:
            self._counts[event] += amount
        for recorder in _recorders.get():
            recorder[event] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


@contextmanager
def record() -> Iterator[Counts]:
    """Count the cache events of every QueryCache inside the block (this thread/task only)."""
    counts = Counts()
    token = _recorders.set((*_recorders.get(), counts))
    try:
        yield counts
    finally:
        _recorders.reset(token)
