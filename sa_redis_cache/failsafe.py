"""What the cache does when its own code fails: never raise into the application.

Every SQLAlchemy event hook of the cache runs inside the application's own call (an ``execute``, a
``commit``), so an exception escaping from one would break a request that would have worked without
the cache. The rule, applied in ``wiring.py``:

- a read whose cache handling fails is read from the database (a bypass);
- a statement that cannot be classified counts as writing every table;
- a write or a commit whose invalidation fails is remembered as undelivered, so this process
  serves none of those tables until a later bump gets through (as when Redis is down);
- state that can no longer be trusted (a transaction whose savepoints were lost track of) turns
  into "wrote every table, snapshot unknown": nothing is served or stored in that transaction and
  its commit invalidates everything.

Each failure is counted under ``errors`` and logged with its traceback once per hook and statement
shape; repeats go to DEBUG, so a failure on a hot path cannot flood the log.

Exceptions that are not ``Exception`` (``asyncio.CancelledError``, ``KeyboardInterrupt``,
``GreenletExit``) are never caught: they belong to the application.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

from .stats import Stats

log = logging.getLogger("sa_redis_cache")

_REMEMBERED_SHAPES: Final = 1024


class InternalErrors:
    """Counts and logs the cache's own failures, each shape with its traceback once."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._seen: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def report(self, hook: str, statement: str | None, exc: Exception, fallback: str) -> None:
        """Count ``exc`` (raised by the cache's code in ``hook``) and log what was done instead."""
        self._stats.count("errors")
        shape = (hook, (statement or "")[:200], type(exc).__qualname__)
        with self._lock:
            first = shape not in self._seen
            if first and len(self._seen) < _REMEMBERED_SHAPES:
                self._seen.add(shape)
        if first:
            log.warning(
                "sa_redis_cache internal error in %s (%s: %s); %s. Statement: %.200s",
                hook,
                type(exc).__qualname__,
                exc,
                fallback,
                statement or "-",
                exc_info=exc,
            )
        else:
            log.debug("sa_redis_cache internal error in %s again (%r); %s", hook, exc, fallback)
