"""The read path: decide whether a SELECT may use the cache, serve a hit, store a miss.

A hit is one Redis round trip: the lookup script checks the entry against the current versions of
its tables and returns its payload only if it is still valid. A miss adds one more (the store
script, which refuses if anything moved since the lookup). An entry records the versions read
*before* its SQL ran, so a write that commits while the SQL runs makes the entry dead, never lost.

Stampedes: on a miss the lookup also takes a short lock. A process that finds the lock taken waits
up to ``stampede_wait`` for the holder's entry, polling with backoff, then reads the database.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.engine.default import DefaultExecutionContext

from .config import CacheConfig
from .cursor import BufferedCursor
from .errors import CorruptEntryError
from .invalidation import Invalidator
from .keys import KeyBuilder
from .near import NearCache, NearEntry
from .serialization import decode_payload, encode_entry, encode_parameters, entry_header
from .stats import Stats
from .store import CircuitOpen, EntryKeys, LookupReply, RedisUnavailable, Store
from .store.base import unique_token
from .tables import ALL_TABLES, StatementPlan
from .write_tracking import TransactionState

log = logging.getLogger("sa_redis_cache")

PENDING_STORE_ATTR: Final = "_sa_redis_cache_pending_store"
_FIRST_POLL: Final = 0.002
_LONGEST_POLL: Final = 0.05


@dataclass(frozen=True, slots=True)
class _TableKeys:
    versions: tuple[str, ...]
    writing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Lookup:
    """One statement's lookup: its keys and what the scripts are told about it."""

    keys: EntryKeys
    header: bytes
    token: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class PendingStore:
    """What a miss needs to store its rows once the statement has run."""

    lookup: _Lookup
    reply: LookupReply
    version_keys: tuple[str, ...]
    near_generation: int


class ReadPath:
    def __init__(
        self,
        store: Store,
        keys: KeyBuilder,
        invalidator: Invalidator,
        config: CacheConfig,
        stats: Stats,
        near: NearCache | None = None,
    ) -> None:
        self._store = store
        self._near = near
        self._keys = keys
        self._invalidator = invalidator
        self._config = config
        self._stats = stats
        self._lock_ms = int(config.stampede_wait * 1000)
        self.cache_by_default = config.cache_by_default
        self._heartbeat = keys.heartbeat if config.require_watcher else None
        self._watcher_warned = float("-inf")
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
                entry_key, digest = self._keys.entry(statement, encode_parameters(parameters))
            except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError too
                reason = f"statement or parameters cannot be encoded ({exc})"
        if reason is not None:
            self.capture_snapshot(state)
            self._stats.count("bypasses")
            log.debug("not cached (%s): %.200s", reason, statement)
            return None

        table_keys = self._keys_for(plan.tables)
        near, generation = self._near, 0
        if near is not None:
            found = near.get(entry_key)
            if found is not None and _fits_snapshot(found.versions, state):
                self._stats.count("hits")
                self._stats.count("near_hits")
                return BufferedCursor(found.description, found.rows)
            generation = near.generation
        lookup = _Lookup(
            EntryKeys(
                self._keys.clock,
                entry_key,
                self._keys.lock(digest),
                table_keys.versions,
                table_keys.writing,
                self._heartbeat,
            ),
            entry_header(digest),
            unique_token(),  # the lock's token: unique, as an epoch is
            _ttl_seconds(context, self._config.ttl) * 1000,
        )
        reply = self._lookup(lookup, state)
        if reply is not None and state.snapshot_clock is None:
            state.snapshot_clock = reply.clock
        if (
            reply is not None
            and reply.payload is None
            and self._lock_ms
            and _someone_else_computes(reply, state)
        ):
            reply = self._wait_for_other_process(lookup, state)
        if reply is None:
            return None
        if not _usable(reply, state):
            # a writer is committing, or the table changed since this transaction's snapshot
            # (the database answers as of the snapshot): read it, store nothing
            self._stats.count("bypasses")
            if reply.watcher_missing and time.monotonic() - self._watcher_warned > 60:
                self._watcher_warned = time.monotonic()
                log.warning(
                    "require_watcher: no binlog watcher is following this database server; "
                    "reading from the database"
                )
            return None

        if reply.corrupt:
            self._stats.count("errors")
            log.warning("discarding a corrupt cache entry %s", entry_key)
        if reply.payload is not None:
            try:
                entry = decode_payload(reply.payload)
            except CorruptEntryError as exc:
                self._stats.count("errors")
                log.warning("discarding a corrupt cache entry %s: %s", entry_key, exc)
            else:
                self._stats.count("hits")
                if near is not None:
                    near.put(
                        entry_key,
                        NearEntry(
                            entry.description, entry.rows, reply.epoch, reply.versions,
                            table_keys.versions, len(reply.payload),
                        ),
                        generation,
                    )  # fmt: skip
                return BufferedCursor(entry.description, entry.rows)

        self._stats.count("misses")
        pending = PendingStore(lookup, reply, table_keys.versions, generation)
        setattr(context, PENDING_STORE_ATTR, pending)
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
        lookup, reply = pending.lookup, pending.reply
        cursor = context.cursor
        description = cursor.description
        if description is None:  # returned no rows at all: nothing to store
            if reply.locked:
                with contextlib.suppress(RedisUnavailable):  # the lock expires anyway
                    self._store.release(lookup.keys, lookup.token)
            return
        rows = cursor.fetchall()
        cursor.close()
        context.cursor = BufferedCursor(description, rows)  # type: ignore[assignment]
        try:
            entry = encode_entry(lookup.header, reply.epoch, reply.versions, description, rows)
        except (TypeError, ValueError, OverflowError) as exc:
            entry = None
            log.info("result not cached: %s", exc)
        if entry is not None and len(entry) > self._config.max_entry_bytes:
            log.debug("result not cached: %d bytes is over max_entry_bytes", len(entry))
            entry = None
        try:
            if entry is None:
                self._stats.count("bypasses")
                if reply.locked:  # let the processes waiting for it go to the database now
                    self._store.release(lookup.keys, lookup.token)
            elif (
                self._store.store(
                    lookup.keys,
                    epoch=reply.epoch,
                    versions=reply.versions,
                    entry=entry,
                    token=lookup.token,
                    ttl_ms=lookup.ttl_ms,
                )
                is not False  # stored, or sent with its reply skipped
            ):
                self._stats.count("stores")
                if self._near is not None:
                    rows_held = NearEntry(
                        description, tuple(rows), reply.epoch, reply.versions,
                        pending.version_keys, len(entry),
                    )  # fmt: skip
                    self._near.put(lookup.keys.entry, rows_held, pending.near_generation)
        except RedisUnavailable as exc:
            self._stats.count("errors")
            log.debug("cache store failed: %s", exc)

    def _lookup(self, lookup: _Lookup, state: TransactionState) -> LookupReply | None:
        try:
            return self._store.lookup(
                lookup.keys,
                ttl_ms=lookup.ttl_ms,
                snapshot=state.snapshot_clock,
                header=lookup.header,
                token=lookup.token,
                lock_ms=self._lock_ms,
            )
        except RedisUnavailable as exc:
            state.note_uncached_statement()
            self._stats.count("bypasses" if isinstance(exc, CircuitOpen) else "errors")
            log.debug("cache lookup failed, reading from the database: %s", exc)
            return None

    def _wait_for_other_process(
        self, lookup: _Lookup, state: TransactionState
    ) -> LookupReply | None:
        """Poll until the lock holder's entry appears, the lock is ours, or time is up."""
        deadline = time.monotonic() + self._config.stampede_wait
        delay = _FIRST_POLL
        while (remaining := deadline - time.monotonic()) > 0:
            self._store.pause(min(delay, remaining))
            delay = min(delay * 2, _LONGEST_POLL)
            reply = self._lookup(lookup, state)
            if reply is None or not _someone_else_computes(reply, state):
                return reply
        self._stats.count("bypasses")
        log.debug(
            "gave up waiting for another process's result after %ss", self._config.stampede_wait
        )
        return None

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
        if _reads_uncommitted(context):
            return "READ UNCOMMITTED: the rows may never be committed"
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
                tuple(self._keys.version(t) for t in ordered),
                (*(self._keys.writing(t) for t in ordered), self._keys.writing(ALL_TABLES)),
            )
            if len(self._table_keys) < 65536:
                self._table_keys[tables] = keys
        return keys


def _fits_snapshot(versions: tuple[int, ...], state: TransactionState) -> bool:
    """May a near-cache entry with these versions be served in this transaction?"""
    snapshot = state.snapshot_clock
    return snapshot is None or not versions or max(versions) <= snapshot


def _usable(reply: LookupReply, state: TransactionState) -> bool:
    """May this transaction serve or store the entry? Not while a writer of one of its tables is
    committing, nor if a table changed after the transaction's snapshot."""
    snapshot = reply.clock if state.snapshot_clock is None else state.snapshot_clock
    versions = reply.versions
    return not reply.writer_alive and (not versions or max(versions) <= snapshot)


def _someone_else_computes(reply: LookupReply, state: TransactionState) -> bool:
    return reply.payload is None and not reply.locked and _usable(reply, state)


def caching_enabled(context: DefaultExecutionContext, default: bool = False) -> bool:
    """The statement's own ``redis_cache`` option wins over the session's (which SQLAlchemy
    applies at connection level, where it would otherwise override the statement's); with
    neither, ``default`` (the cache's ``cache_by_default``)."""
    statement = context.invoked_statement
    if statement is not None:
        own = statement.get_execution_options()
        if "redis_cache" in own:
            return bool(own["redis_cache"])
    return bool(context.execution_options.get("redis_cache", default))


def _reads_uncommitted(context: DefaultExecutionContext) -> bool:
    """Does this statement run under READ UNCOMMITTED (the connection's option, the engine's,
    or the server's default)? Such rows must never be stored: they may be rolled back."""
    dialect = context.dialect
    level = (
        context.execution_options.get("isolation_level")
        or getattr(dialect, "_on_connect_isolation_level", None)
        or getattr(dialect, "default_isolation_level", None)
    )
    return isinstance(level, str) and "UNCOMMITTED" in level.upper()


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
