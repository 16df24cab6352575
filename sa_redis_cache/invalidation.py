"""Invalidation: moving table versions forward when a transaction that wrote them commits.

A commit costs two bumps. Before the database commit, ``announce`` moves the versions and marks the
tables "being written" with a lease; after it, ``finish`` moves them again and removes the mark.
Between the two, other processes neither serve nor store those tables: if this process dies after
the database commit and before ``finish``, the mark simply expires and nothing stale was stored.
The second bump closes the REPEATABLE READ window: a transaction whose snapshot predates the
database commit read the counter before ``finish`` and so sees the table as changed.

A bump that cannot be delivered (Redis down) is remembered: this process serves none of those
tables from the cache until a later bump gets through. Other processes cannot be told; for them the
entry TTL bounds the staleness (see the README's fault table).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from .config import CacheConfig
from .keys import KeyBuilder
from .near import NearCache
from .stats import Stats
from .store import RedisUnavailable, Store
from .store.base import unique_token
from .tables import ALL_TABLES

log = logging.getLogger("sa_redis_cache")


class Invalidator:
    def __init__(self, store: Store, keys: KeyBuilder, config: CacheConfig, stats: Stats) -> None:
        self._store = store
        self._keys = keys
        self._stats = stats
        self._ttl_ms = config.ttl * 1000
        self._lease_ms = int(config.write_lease * 1000)
        self._undelivered: set[str] = set()
        self._lock = threading.Lock()
        self.near: NearCache | None = None
        """This process's near cache, told of this process's own bumps directly."""

    def announce(self, tables: frozenset[str]) -> str | None:
        """Before the database commit: bump and mark. Returns the writer token, or None if Redis
        could not be told (the tables are then remembered as undelivered)."""
        token = unique_token()  # unique: the writer's token in the marks
        if self._bump(tables, "announce", token):
            return token
        return None

    def finish(self, tables: frozenset[str], token: str | None) -> None:
        """After the database commit (or its failure): bump again and remove the mark."""
        if self._bump(tables, "finish" if token else "publish", token or ""):
            self._stats.count("invalidations", len(tables))

    def publish(self, tables: Iterable[str]) -> bool:
        """A single bump with no mark: DDL, autocommit writes, explicit ``invalidate()``, the
        binlog watcher. Returns False if Redis could not be told (the tables are then remembered
        as undelivered); a caller that must not move on, like the watcher, tries again."""
        tables = frozenset(tables)
        if tables and self._bump(tables, "publish", ""):
            self._stats.count("invalidations", len(tables))
            return True
        return not tables

    def mark_undelivered(self, tables: Iterable[str]) -> None:
        """Remember ``tables`` as written but not yet bumped in Redis (the bump failed in a way
        the store could not report): this process serves none of them until a bump gets through."""
        with self._lock:
            self._undelivered |= frozenset(tables)

    def blocks(self, tables: frozenset[str]) -> bool:
        """True while a bump of one of ``tables`` (or of every table) is still undelivered."""
        if not self._undelivered:
            return False
        self._retry()
        pending = self._undelivered
        return ALL_TABLES in pending or not pending.isdisjoint(tables)

    @classmethod
    def for_server(
        cls, store: Store, config: CacheConfig, stats: Stats, server_id: str
    ) -> Invalidator:
        """An invalidator of one database server with no engine: it names tables
        ``schema.table`` (any schema), as readers' version keys do."""
        return cls(store, KeyBuilder(config.namespace, server_id, "", ""), config, stats)

    def _retry(self) -> None:
        with self._lock:
            pending = frozenset(self._undelivered)
        if pending and self._store.breaker.allows() and self._bump(pending, "publish", ""):
            log.info("delivered the pending invalidation of %s", ", ".join(sorted(pending)))

    def _bump(self, tables: frozenset[str], mode: str, token: str) -> bool:
        named = sorted(t for t in tables if t != ALL_TABLES)
        markers = [self._keys.writing(t) for t in named]
        all_tables = ALL_TABLES in tables
        if all_tables:
            markers.append(self._keys.writing(ALL_TABLES))
        version_keys = [self._keys.version(t) for t in named]
        try:
            counter = self._store.bump(
                self._keys.clock,
                version_keys,
                markers,
                mode=mode,
                token=token,
                lease_ms=self._lease_ms,
                ttl_ms=self._ttl_ms,
                all_tables=all_tables,
                channel=self._keys.bumps,
            )
        except RedisUnavailable as exc:
            self.mark_undelivered(tables)
            self._stats.count("errors")
            log.warning(
                "could not invalidate %s in Redis (%s); this process will not serve them from "
                "the cache until it can",
                ", ".join(sorted(tables)),
                exc,
            )
            return False
        if self.near is not None:  # this process sees its own writes at once
            self.near.bumped_here(version_keys, counter, all_tables)
        with self._lock:
            # this bump happened after every write it covers was committed
            if mode != "announce":
                self._undelivered -= tables
        return True
