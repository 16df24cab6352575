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

Every hook runs behind a guard (see failsafe.py): an exception from the cache's own code is
counted, logged once per shape and replaced by the safe fallback named beside the hook in
``_listeners``; it never reaches the application.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.default import DefaultExecutionContext

from .cascades import CascadeMap
from .config import CacheConfig
from .failsafe import InternalErrors
from .invalidation import Invalidator
from .keys import KeyBuilder, default_schema
from .near import NearCache
from .reads import PENDING_STORE_ATTR, ReadPath, caching_enabled
from .stats import Stats
from .store import Store
from .tables import ALL_TABLES, StatementKind, StatementPlan, TableDetector
from .write_tracking import TransactionState, TransactionStates

# a hook's body or its fallback, called with the event's own arguments
Hook = Callable[..., Any]

log = logging.getLogger("sa_redis_cache")

_PUBLISH_ATTR: Final = "_sa_redis_cache_publish"
# in a pooled connection's ``info`` (which lives as long as the DBAPI connection): why the cache
# no longer trusts what the connection's SQL means (see StatementKind.SESSION)
_FOREIGN_STATE: Final = "sa_redis_cache_foreign_state"
# Dialects on which INSERT/UPDATE/DELETE do not take the transaction's read snapshot (InnoDB takes
# it at the first consistent read; SQLite at the first read).
_SNAPSHOT_AT_FIRST_READ: Final = frozenset({"mysql", "mariadb", "sqlite"})
_WRITES_EVERYTHING: Final = StatementPlan(StatementKind.WRITE, frozenset({ALL_TABLES}))


class _Committing(NamedTuple):
    """A commit between its announcement and its bump."""

    tables: frozenset[str]
    token: str | None


class EngineWiring:
    """The cache as installed on one engine."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        config: CacheConfig,
        stats: Stats,
        database_id: str,
        near: NearCache | None = None,
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
        self.invalidator.near = near
        self.reads = ReadPath(store, self.keys, self.invalidator, config, stats, near)
        self.cascades = CascadeMap(
            dialect.name,
            self.detector.table_name,
            schema,
            is_mariadb=lambda: bool(getattr(dialect, "is_mariadb", False)),
        )
        self._stats = stats
        self._errors = InternalErrors(stats)
        self._dml_takes_snapshot = dialect.name not in _SNAPSHOT_AT_FIRST_READ
        self._transactions = TransactionStates()
        # commits between announcement and bump, by pooled connection (what do_commit is given),
        # and which of them each Connection started (a rollback must not touch conn.connection:
        # on an invalidated Connection that reconnects)
        self._committing: dict[int, _Committing] = {}
        self._commit_keys: weakref.WeakKeyDictionary[Connection, tuple[int, _Committing]] = (
            weakref.WeakKeyDictionary()
        )
        self._originals: dict[str, Callable[..., None]] = {}
        # (event, body, fallback when the body raises)
        hooks: list[tuple[str, str, Hook]] = [
            # SQLAlchemy ignores insert=True for dialect events: do_execute listeners registered
            # before install() run before ours and so also see the statements served from cache
            ("do_execute", "_on_execute", self._execute_failed),
            ("do_execute_no_params", "_on_execute_no_params", self._execute_no_params_failed),
            ("do_executemany", "_on_execute", self._execute_failed),
            ("after_cursor_execute", "_after_execute", self._after_execute_failed),
            ("begin", "_on_begin", self._distrust),
            ("savepoint", "_on_savepoint", self._distrust),
            ("release_savepoint", "_on_release_savepoint", self._distrust),
            ("rollback_savepoint", "_on_rollback_savepoint", self._distrust),
            ("commit", "_on_commit", self._commit_failed),
            ("rollback", "_on_rollback", self._rollback_failed),
            ("begin_twophase", "_on_begin_twophase", self._distrust),
            ("commit_twophase", "_on_commit_twophase", self._commit_failed),
            ("rollback_twophase", "_on_rollback_twophase", self._rollback_failed),
        ]
        self._listeners = [(name, self._guard(body, fallback)) for name, body, fallback in hooks]

    def install(self) -> None:
        for name, fn in self._listeners:
            event.listen(self.engine, name, fn)
        # the dialect's commit methods, wrapped on this engine's dialect instance only
        dialect = self.engine.dialect
        for name, wrapper in (
            ("do_commit", self._do_commit),
            ("do_commit_twophase", self._do_commit_twophase),
        ):
            self._originals[name] = getattr(dialect, name)
            setattr(dialect, name, wrapper)

    def uninstall(self) -> None:
        for name, fn in self._listeners:
            event.remove(self.engine, name, fn)
        dialect = self.engine.dialect
        for name, original in self._originals.items():
            if getattr(original, "__self__", None) is dialect:
                delattr(dialect, name)  # the dialect class's own method shows through again
            else:
                setattr(dialect, name, original)  # another wrapper installed before ours
        self._originals.clear()

    def _guard(self, body: str, fallback: Hook) -> Hook:
        """The listener for one event: ``body`` (looked up on each call), and if the cache's own
        code raises, ``fallback`` with the same arguments. Neither raises into the application."""

        def listener(*args: Any) -> Any:
            try:
                return getattr(self, body)(*args)
            except Exception as exc:
                self._errors.report(body, _statement_of(args), exc, "fell back to the safe path")
                try:
                    return fallback(*args)
                except Exception as again:  # the fallbacks do no I/O of their own: last resort
                    self._errors.report(fallback.__name__, _statement_of(args), again, "gave up")
                    self.invalidator.mark_undelivered({ALL_TABLES})
                    return False

        listener.__name__ = listener.__qualname__ = f"sa_redis_cache_{body.lstrip('_')}"
        return listener

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
        if plan.kind is StatementKind.SESSION or _FOREIGN_STATE in _info(connection):
            return self._on_foreign_connection(connection, statement, context, plan, state)
        if plan.kind is StatementKind.READ:
            default = self.reads.cache_by_default
            if not caching_enabled(context, default) or context.executemany:
                if context.execution_options.get("redis_cache", default):
                    self.reads.capture_snapshot(state)  # a caching session's uncached statement
                else:
                    state.note_uncached_statement()
                return False
            try:
                cached = self.reads.serve(context, statement, parameters, plan, state)
            except Exception as exc:
                self._errors.report("read", statement, exc, "read from the database")
                context.__dict__.pop(PENDING_STORE_ATTR, None)
                state.note_uncached_statement()
                return False
            if cached is None:
                return False
            context.cursor = cached  # type: ignore[assignment]
            with contextlib.suppress(Exception):  # the real cursor never ran: nothing to lose
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

    def _on_foreign_connection(
        self,
        connection: Connection,
        statement: str,
        context: DefaultExecutionContext,
        plan: StatementPlan,
        state: TransactionState,
    ) -> bool:
        """A connection whose SQL the cache can no longer interpret (another default schema,
        autocommit switched behind SQLAlchemy's back, dirty reads): until the DBAPI connection is
        closed, it reads from the database and each write invalidates everything at once."""
        if plan.kind is StatementKind.SESSION:
            info = _info(connection)
            if _FOREIGN_STATE not in info:
                log.info("a connection ran %.100s; the cache leaves it alone now", statement)
            info[_FOREIGN_STATE] = statement[:200]
            state.distrust()
        elif plan.kind is StatementKind.READ:
            state.note_uncached_statement()
            self._stats.count("bypasses")
        elif plan.kind is not StatementKind.OTHER:
            state.record_writes(_WRITES_EVERYTHING.tables)
            setattr(context, _PUBLISH_ATTR, _WRITES_EVERYTHING)
        return False

    def _plan(self, context: DefaultExecutionContext, statement: str) -> StatementPlan:
        compiled = context.compiled
        if compiled is not None and context.isinsert:
            # INSERT ... VALUES batches can be huge: name the target without parsing (the compile
            # state has it even for an ORM insert loaded through from_statement(), whose statement
            # is a FromStatement with no table of its own); failing that, parse
            table = getattr(getattr(compiled, "dml_compile_state", None), "dml_table", None)
            if table is not None and isinstance(getattr(table, "name", None), str):
                name = self.detector.table_name(table.name, table.schema)
                return StatementPlan(StatementKind.WRITE, frozenset({name}))
        plan = self.detector.plan(statement)
        if context.isddl and plan.kind is not StatementKind.DDL:
            return StatementPlan(StatementKind.DDL, plan.tables or frozenset({ALL_TABLES}))
        return plan

    def _execute_failed(
        self, cursor: Any, statement: str, parameters: Any, context: DefaultExecutionContext
    ) -> bool:
        """The statement could not be classified: it runs on the database and counts as writing
        every table, now if its connection autocommits, at the latest at commit otherwise."""
        connection = context.root_connection
        self._transactions.of(connection).distrust()
        try:
            autocommit = connection._is_autocommit_isolation()
        except Exception:
            autocommit = True
        if autocommit:
            setattr(context, _PUBLISH_ATTR, _WRITES_EVERYTHING)
        return False

    def _execute_no_params_failed(
        self, cursor: Any, statement: str, context: DefaultExecutionContext
    ) -> bool:
        return self._execute_failed(cursor, statement, (), context)

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
            try:
                self.reads.store_after_execute(context, pending)
            except Exception as exc:  # the rows are served either way; storing is optional
                self._errors.report("store", statement, exc, "result served, not stored")
        plan = context.__dict__.get(_PUBLISH_ATTR)
        if plan is not None:
            if plan.kind is StatementKind.DDL:
                self.cascades.forget()
            state = self._transactions.of(conn)
            tables = frozenset(state.written()) | plan.tables
            self.invalidator.publish(self.cascades.expand(tables, conn.connection.dbapi_connection))
            del context.__dict__[_PUBLISH_ATTR]

    def _after_execute_failed(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: DefaultExecutionContext,
        executemany: bool,
    ) -> None:
        """A write that is already committed could not be published as planned: publish every
        table, or block them all in this process until that gets through."""
        if context.__dict__.pop(_PUBLISH_ATTR, None) is not None:
            self._publish_everything()

    def _publish_everything(self) -> None:
        try:
            self.invalidator.publish({ALL_TABLES})
        except Exception:
            self.invalidator.mark_undelivered({ALL_TABLES})

    # -- transactions --------------------------------------------------------------------------

    def _on_begin(self, conn: Connection) -> None:
        self._transactions.reset(conn)

    def _on_savepoint(self, conn: Connection, name: str | None) -> None:
        self._transactions.of(conn).savepoint(name)

    def _on_release_savepoint(self, conn: Connection, name: str, context: Any) -> None:
        self._transactions.of(conn).release_savepoint(name)

    def _on_rollback_savepoint(self, conn: Connection, name: str, context: Any) -> None:
        self._transactions.of(conn).rollback_savepoint(name)

    def _distrust(self, conn: Connection, *event_args: Any) -> None:
        """Lost track of the transaction: from now on it counts as having written every table
        (its commit invalidates everything) and serves and stores nothing."""
        self._transactions.of(conn).distrust()

    def _on_commit(self, conn: Connection) -> None:
        """Before the database commit: announce what this transaction wrote."""
        written = frozenset(self._transactions.of(conn).written())
        self._transactions.reset(conn)
        if not written or conn.invalidated:  # an invalidated connection commits nothing
            return
        tables = self.cascades.expand(written, conn.connection.dbapi_connection)
        self._announce(conn, tables)

    def _commit_failed(self, conn: Connection, *event_args: Any) -> None:
        """Whatever the transaction wrote, it counts as every table."""
        self._transactions.reset(conn)
        if not conn.invalidated:
            self._announce(conn, frozenset({ALL_TABLES}))

    def _announce(self, conn: Connection, tables: frozenset[str]) -> None:
        key = id(conn.connection)
        # registered first: if the announcement raises, the commit still publishes its tables
        self._register(conn, key, _Committing(tables, None))
        self._register(conn, key, _Committing(tables, self.invalidator.announce(tables)))

    def _register(self, conn: Connection, key: int, committing: _Committing) -> None:
        self._committing[key] = committing
        self._commit_keys[conn] = (key, committing)

    def _do_commit(self, dbapi_connection: Any) -> None:
        """The database commit, then the bump, both before ``commit()`` returns."""
        committing = self._committing.pop(id(dbapi_connection), None)
        try:
            self._originals["do_commit"](dbapi_connection)
        finally:
            if committing is not None:
                self._finish(committing)

    def _finish(self, committing: _Committing) -> None:
        """The second bump; never raises (it runs on the application's commit path)."""
        try:
            self.invalidator.finish(*committing)
        except Exception as exc:
            self._errors.report("finish", None, exc, "tables blocked until a bump gets through")
            self.invalidator.mark_undelivered(committing.tables)

    def _on_begin_twophase(self, conn: Connection, xid: Any) -> None:
        self._transactions.reset(conn)

    def _on_commit_twophase(self, conn: Connection, xid: Any, is_prepared: bool) -> None:
        self._on_commit(conn)

    def _do_commit_twophase(self, conn: Connection, xid: Any, *args: Any, **kw: Any) -> None:
        """Two-phase commits get their Connection, not the DBAPI connection: same protocol."""
        committing = self._take_committing(conn)
        try:
            self._originals["do_commit_twophase"](conn, xid, *args, **kw)
        finally:
            if committing is not None:
                self._finish(committing)

    def _on_rollback_twophase(self, conn: Connection, xid: Any, is_prepared: bool) -> None:
        self._on_rollback(conn)

    def _on_rollback(self, conn: Connection) -> None:
        self._transactions.reset(conn)
        committing = self._take_committing(conn)
        if committing is not None:  # a commit that never reached the database: lift the mark
            self._finish(committing)

    def _rollback_failed(self, conn: Connection, *event_args: Any) -> None:
        self._transactions.reset(conn)

    def _take_committing(self, conn: Connection) -> _Committing | None:
        """The announced, unfinished commit this Connection started, if any."""
        key, committing = self._commit_keys.pop(conn, (0, None))
        if committing is not None and self._committing.get(key) is committing:
            del self._committing[key]
            return committing
        return None


def _info(connection: Connection) -> dict[Any, Any]:
    """The pooled connection's ``info`` (it lives as long as the DBAPI connection); a throwaway
    dict for the connection a dialect makes for its first-connect queries, which has none."""
    try:
        return connection.info
    except NotImplementedError:
        return {}


def _statement_of(event_args: tuple[Any, ...]) -> str | None:
    """The SQL among a hook's arguments, for the error log."""
    return next((a for a in event_args[1:3] if isinstance(a, str)), None)
