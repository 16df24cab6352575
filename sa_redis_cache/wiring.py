"""SQLAlchemy wiring: every event this library listens to, connected in one place.

Statements are seen at the DBAPI boundary (``do_execute`` and friends): after every
``before_cursor_execute`` rewrite, with the exact SQL and parameters the database would receive, for
ORM, Core and text SQL alike, including the loader statements an ORM result runs while it is
consumed. A hit puts a cursor holding cached rows in place of the real one and skips the DBAPI call,
so the ORM (autoflush before the query, identity map, eager loading, type processing) behaves as if
the database had answered.

Transactions are followed with the Core connection events (begin, savepoints, commit, rollback).
The commit event fires *before* the database commit; the bump that must follow it is made by a
wrapper around this engine's ``dialect.do_commit``, the only hook that runs after the commit and
before ``commit()`` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.default import DefaultExecutionContext

from .cascades import CascadeMap
from .config import CacheConfig
from .invalidation import Invalidator
from .keys import KeyBuilder, default_schema
from .reads import PENDING_STORE_ATTR, ReadPath, caching_enabled
from .redis_store import RedisStore
from .stats import Stats
from .tables import ALL_TABLES, StatementKind, StatementPlan, TableDetector
from .write_tracking import TransactionStates

log = logging.getLogger("sa_redis_cache")

_PUBLISH_ATTR: Final = "_sa_redis_cache_publish"
# Dialects on which INSERT/UPDATE/DELETE do not take the transaction's read snapshot (InnoDB takes
# it at the first consistent read; SQLite at the first read).
_SNAPSHOT_AT_FIRST_READ: Final = frozenset({"mysql", "mariadb", "sqlite"})


class EngineWiring:
    """The cache as installed on one engine."""

    def __init__(
        self,
        engine: Engine,
        store: RedisStore,
        config: CacheConfig,
        stats: Stats,
        database_id: str,
    ) -> None:
        dialect = engine.dialect
        self.engine = engine
        schema = default_schema(engine.url)
        self.detector = TableDetector(dialect.name, schema)
        self.keys = KeyBuilder(
            config.namespace,
            database_id,
            schema,
            f"{dialect.name}+{dialect.driver}",
        )
        self.invalidator = Invalidator(store, self.keys, config, stats)
        self.reads = ReadPath(store, self.keys, self.invalidator, config, stats)
        self.cascades = CascadeMap(dialect.name, self.detector.table_name)
        self._dml_takes_snapshot = dialect.name not in _SNAPSHOT_AT_FIRST_READ
        self._transactions = TransactionStates()
        self._committing: dict[int, tuple[frozenset[str], str | None]] = {}
        self._originals: dict[str, Callable[..., None]] = {}
        self._listeners: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
            # SQLAlchemy ignores insert=True for dialect events: do_execute listeners registered
            # before install() run before ours and so also see the statements served from cache
            ("do_execute", self._on_execute, {}),
            ("do_execute_no_params", self._on_execute_no_params, {}),
            ("do_executemany", self._on_execute, {}),
            ("after_cursor_execute", self._after_execute, {}),
            ("begin", self._on_begin, {}),
            ("savepoint", self._on_savepoint, {}),
            ("release_savepoint", self._on_release_savepoint, {}),
            ("rollback_savepoint", self._on_rollback_savepoint, {}),
            ("commit", self._on_commit, {}),
            ("rollback", self._on_rollback, {}),
            ("begin_twophase", self._on_begin_twophase, {}),
            ("commit_twophase", self._on_commit_twophase, {}),
            ("rollback_twophase", self._on_rollback_twophase, {}),
        ]

    def install(self) -> None:
        for name, fn, kw in self._listeners:
            event.listen(self.engine, name, fn, **kw)
        # the dialect's commit methods, wrapped on this engine's dialect instance only
        dialect = self.engine.dialect
        for name, wrapper in (
            ("do_commit", self._do_commit),
            ("do_commit_twophase", self._do_commit_twophase),
        ):
            self._originals[name] = getattr(dialect, name)
            setattr(dialect, name, wrapper)

    def uninstall(self) -> None:
        for name, fn, _ in self._listeners:
            event.remove(self.engine, name, fn)
        dialect = self.engine.dialect
        for name, original in self._originals.items():
            if getattr(original, "__self__", None) is dialect:
                delattr(dialect, name)  # the dialect class's own method shows through again
            else:
                setattr(dialect, name, original)  # another wrapper installed before ours
        self._originals.clear()

    # -- statements ----------------------------------------------------------------------------

    def _on_execute_no_params(
        self, cursor: Any, statement: str, context: DefaultExecutionContext
    ) -> bool:
        return self._on_execute(cursor, statement, (), context)

    def _on_execute(
        self, cursor: Any, statement: str, parameters: Any, context: DefaultExecutionContext
    ) -> bool:
        """Returns True when a hit has been served (the DBAPI call is then skipped)."""
        connection = context.root_connection
        state = self._transactions.of(connection)
        plan = self._plan(context, statement)
        if plan.kind is StatementKind.READ:
            default = self.reads.cache_by_default
            if not caching_enabled(context, default) or context.executemany:
                if context.execution_options.get("redis_cache", default):
                    self.reads.capture_snapshot(state)  # a caching session's uncached statement
                else:
                    state.note_uncached_statement()
                return False
            cached = self.reads.serve(context, statement, parameters, plan, state)
            if cached is None:
                return False
            context.cursor = cached  # type: ignore[assignment]
            cursor.close()
            return True
        if plan.kind is StatementKind.OTHER:
            return False
        state.record_writes(plan.tables)
        if self._dml_takes_snapshot or plan.kind is StatementKind.DDL:
            state.note_uncached_statement()
        # DDL commits implicitly on MySQL; autocommit writes are committed already. (SQLAlchemy has
        # no public way to ask a Connection whether it autocommits without a database round trip.)
        if plan.kind is StatementKind.DDL or connection._is_autocommit_isolation():
            setattr(context, _PUBLISH_ATTR, plan)
        return False

    def _plan(self, context: DefaultExecutionContext, statement: str) -> StatementPlan:
        compiled = context.compiled
        if compiled is not None and context.isinsert:
            # INSERT ... VALUES batches can be huge: name the target without parsing
            table = getattr(compiled.statement, "table")  # noqa: B009 (an Insert; untyped here)
            name = self.detector.table_name(table.name, table.schema)
            return StatementPlan(StatementKind.WRITE, frozenset({name}))
        plan = self.detector.plan(statement)
        if context.isddl and plan.kind is not StatementKind.DDL:
            return StatementPlan(StatementKind.DDL, plan.tables or frozenset({ALL_TABLES}))
        return plan

    def _after_execute(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: DefaultExecutionContext,
        executemany: bool,
    ) -> None:
        pending = context.__dict__.pop(PENDING_STORE_ATTR, None)
        if pending is not None:
            self.reads.store_after_execute(context, pending)
        plan = context.__dict__.pop(_PUBLISH_ATTR, None)
        if plan is not None:
            if plan.kind is StatementKind.DDL:
                self.cascades.forget()
            state = self._transactions.of(conn)
            tables = frozenset(state.written()) | plan.tables
            self.invalidator.publish(self.cascades.expand(tables, conn.connection.dbapi_connection))

    # -- transactions --------------------------------------------------------------------------

    def _on_begin(self, conn: Connection) -> None:
        self._transactions.reset(conn)

    def _on_savepoint(self, conn: Connection, name: str | None) -> None:
        self._transactions.of(conn).savepoint(name)

    def _on_release_savepoint(self, conn: Connection, name: str, context: Any) -> None:
        self._transactions.of(conn).release_savepoint(name)

    def _on_rollback_savepoint(self, conn: Connection, name: str, context: Any) -> None:
        self._transactions.of(conn).rollback_savepoint(name)

    def _on_commit(self, conn: Connection) -> None:
        """Before the database commit: announce what this transaction wrote."""
        written = frozenset(self._transactions.of(conn).written())
        self._transactions.reset(conn)
        if not written:
            return
        tables = self.cascades.expand(written, conn.connection.dbapi_connection)
        self._committing[id(conn.connection)] = (tables, self.invalidator.announce(tables))

    def _do_commit(self, dbapi_connection: Any) -> None:
        """The database commit, then the bump, both before ``commit()`` returns."""
        pending = self._committing.pop(id(dbapi_connection), None)
        try:
            self._originals["do_commit"](dbapi_connection)
        finally:
            if pending is not None:
                self.invalidator.finish(*pending)

    def _on_begin_twophase(self, conn: Connection, xid: Any) -> None:
        self._transactions.reset(conn)

    def _on_commit_twophase(self, conn: Connection, xid: Any, is_prepared: bool) -> None:
        self._on_commit(conn)

    def _do_commit_twophase(self, conn: Connection, xid: Any, *args: Any, **kw: Any) -> None:
        """Two-phase commits get their Connection, not the DBAPI connection: same protocol."""
        pending = self._committing.pop(id(conn.connection), None)
        try:
            self._originals["do_commit_twophase"](conn, xid, *args, **kw)
        finally:
            if pending is not None:
                self.invalidator.finish(*pending)

    def _on_rollback_twophase(self, conn: Connection, xid: Any, is_prepared: bool) -> None:
        self._on_rollback(conn)

    def _on_rollback(self, conn: Connection) -> None:
        self._transactions.reset(conn)
        pending = self._committing.pop(id(conn.connection), None)
        if pending is not None:  # a commit that never reached the database: lift the mark
            self.invalidator.finish(*pending)
