"""The read path: decide whether a SELECT may use the cache, serve a hit, store a miss.

A hit is one Redis round trip (the lookup script returns the entry together with the current
versions of its tables); a miss adds one more (the store script, which refuses if anything moved
since the lookup). An entry records the versions read *before* its SQL ran, so a write that commits
while the SQL runs always makes the entry dead instead of lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.engine.default import DefaultExecutionContext

from .config import CacheConfig
from .cursor import BufferedCursor
from .errors import CorruptEntryError
from .invalidation import Invalidator
from .keys import KeyBuilder
from .redis_store import CircuitOpen, RedisStore, RedisUnavailable
from .serialization import decode_entry, encode_entry, encode_parameters
from .stats import Stats
from .tables import ALL_TABLES, StatementPlan
from .write_tracking import TransactionState

log = logging.getLogger("sa_redis_cache")

PENDING_STORE_ATTR: Final = "_sa_redis_cache_pending_store"


@dataclass(frozen=True, slots=True)
class _TableKeys:
    versions: list[str]
    writing: list[str]


@dataclass(frozen=True, slots=True)
class PendingStore:
    """What a miss needs to store its rows once the statement has run."""

    entry_key: str
    digest: bytes
    table_keys: _TableKeys
    epoch: str
    versions: tuple[int, ...]
    ttl_ms: int


class ReadPath:
    def __init__(
        self,
        store: RedisStore,
        keys: KeyBuilder,
        invalidator: Invalidator,
        config: CacheConfig,
        stats: Stats,
    ) -> None:
        self._store = store
        self._keys = keys
        self._invalidator = invalidator
        self._config = config
        self._stats = stats
        self._table_keys: dict[frozenset[str], _TableKeys] = {}

    def serve(
        self,
        context: DefaultExecutionContext,
        statement: str,
        parameters: Any,
        plan: StatementPlan,
        state: TransactionState,
    ) -> BufferedCursor | None:
        """A cursor holding the cached rows, or None to let the statement run.

        On a miss that may be stored, leaves a :class:`PendingStore` on the context for
        :meth:`store_after_execute`.
        """
        reason = self._bypass_reason(context, plan, state)
        if reason is None:
            try:
                encoded = encode_parameters(parameters)
            except (TypeError, ValueError, OverflowError) as exc:
                reason = f"parameters cannot be encoded ({exc})"
        if reason is not None:
            self.capture_snapshot(state)
            self._stats.count("bypasses")
            log.debug("not cached (%s): %.200s", reason, statement)
            return None

        entry_key, digest = self._keys.entry(statement, encoded)
        table_keys = self._keys_for(plan.tables)
        ttl_ms = _ttl_seconds(context, self._config.ttl) * 1000
        try:
            reply = self._store.lookup(
                self._keys.clock, entry_key, table_keys.versions, table_keys.writing, ttl_ms
            )
        except RedisUnavailable as exc:
            state.note_uncached_statement()
            self._stats.count("bypasses" if isinstance(exc, CircuitOpen) else "errors")
            log.debug("cache lookup failed, reading from the database: %s", exc)
            return None

        if state.snapshot_clock is None:
            state.snapshot_clock = reply.clock
        if reply.writer_alive:
            self._stats.count("bypasses")
            return None
        if any(version > state.snapshot_clock for version in reply.versions):
            # written since this transaction's snapshot: the database answers as of the snapshot
            self._stats.count("bypasses")
            return None

        if reply.entry is not None:
            try:
                entry = decode_entry(reply.entry, digest)
            except CorruptEntryError as exc:
                self._stats.count("errors")
                log.warning("discarding a corrupt cache entry %s: %s", entry_key, exc)
            else:
                if entry.epoch == reply.epoch and entry.versions == reply.versions:
                    self._stats.count("hits")
                    return BufferedCursor(entry.description, entry.rows)

        self._stats.count("misses")
        setattr(
            context,
            PENDING_STORE_ATTR,
            PendingStore(entry_key, digest, table_keys, reply.epoch, reply.versions, ttl_ms),
        )
        return None

    def capture_snapshot(self, state: TransactionState) -> None:
        """A read is about to reach the database without a lookup: if it may take the
        transaction's snapshot, read the write counter first so later reads can still be cached."""
        if state.snapshot_clock is not None or state.snapshot_unknown:
            return
        try:
            state.snapshot_clock = self._store.clock(self._keys.clock)
        except RedisUnavailable:
            state.note_uncached_statement()

    def store_after_execute(self, context: DefaultExecutionContext, pending: PendingStore) -> None:
        """Read the rows off the real cursor, hand SQLAlchemy a buffered copy, store them."""
        cursor = context.cursor
        description = cursor.description
        rows = cursor.fetchall()
        cursor.close()
        if description is None:
            return
        context.cursor = BufferedCursor(description, rows)  # type: ignore[assignment]
        try:
            payload = encode_entry(
                pending.digest, pending.epoch, pending.versions, description, rows
            )
        except (TypeError, ValueError, OverflowError) as exc:
            self._stats.count("bypasses")
            log.info("result not cached: %s", exc)
            return
        if len(payload) > self._config.max_entry_bytes:
            self._stats.count("bypasses")
            log.debug("result not cached: %d bytes is over max_entry_bytes", len(payload))
            return
        try:
            stored = self._store.store(
                self._keys.clock,
                pending.entry_key,
                pending.table_keys.versions,
                pending.table_keys.writing,
                epoch=pending.epoch,
                version_values=pending.versions,
                payload=payload,
                ttl_ms=pending.ttl_ms,
            )
        except RedisUnavailable as exc:
            self._stats.count("errors")
            log.debug("cache store failed: %s", exc)
            return
        if stored:
            self._stats.count("stores")

    def _bypass_reason(
        self, context: DefaultExecutionContext, plan: StatementPlan, state: TransactionState
    ) -> str | None:
        if plan.uncacheable:
            return plan.uncacheable
        options = context.execution_options
        if options.get("stream_results") or options.get("yield_per"):
            return "streamed result (yield_per / stream_results)"
        tables = plan.tables
        if not tables.isdisjoint(self._config.uncached_tables):
            return "reads a table in uncached_tables"
        if state.snapshot_unknown:
            return "the transaction's snapshot was taken before the cache could read its clock"
        written = state.written()
        if written and (ALL_TABLES in written or not written.isdisjoint(tables)):
            return "reads a table this transaction wrote"
        if self._invalidator.blocks(tables):
            return "an invalidation of one of its tables is not yet delivered to Redis"
        return None

    def _keys_for(self, tables: frozenset[str]) -> _TableKeys:
        keys = self._table_keys.get(tables)
        if keys is None:
            ordered = sorted(tables)
            keys = _TableKeys(
                [self._keys.version(t) for t in ordered],
                [*(self._keys.writing(t) for t in ordered), self._keys.writing(ALL_TABLES)],
            )
            if len(self._table_keys) < 65536:
                self._table_keys[tables] = keys
        return keys


def caching_enabled(context: DefaultExecutionContext) -> bool:
    """The statement's own ``redis_cache`` option wins over the session's (which SQLAlchemy
    applies at connection level, where it would otherwise override the statement's)."""
    statement = context.invoked_statement
    if statement is not None:
        own = statement.get_execution_options()
        if "redis_cache" in own:
            return bool(own["redis_cache"])
    return bool(context.execution_options.get("redis_cache", False))


def _ttl_seconds(context: DefaultExecutionContext, default: int) -> int:
    statement = context.invoked_statement
    ttl = None
    if statement is not None:
        ttl = statement.get_execution_options().get("redis_cache_ttl")
    if ttl is None:
        ttl = context.execution_options.get("redis_cache_ttl", default)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        log.warning("ignoring redis_cache_ttl=%r (not a positive integer); using %d", ttl, default)
        return default
    return ttl
