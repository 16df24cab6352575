"""The binlog watcher: every committed write, whoever made it, invalidates the tables it changed.

The cache sees the writes of the engines it is installed on. Everything else (another service, a
cron job, the ``mysql`` command line, triggers, stored procedures, events, migrations run
elsewhere) reaches the database without it. The database's own change log sees them all: the
watcher tails the binary log in ROW format, as a replica would, and for every committed
transaction bumps the versions of every table it changed, through the library's own
:class:`~sa_redis_cache.invalidation.Invalidator` and keys (database identity included), so it
meets the entries of every app on that server.

Events in, table sets out:

- Row events (written, updated, deleted rows) name their table, including the rows written by
  triggers, stored procedures and scheduled events. The tables of a transaction are bumped at its
  commit (the XID event, or a ``COMMIT`` query for non-transactional engines), never before.
- InnoDB foreign-key cascades are NOT in the ROW binlog (only the parent's rows are): the watcher
  expands them itself with the library's :class:`~sa_redis_cache.cascades.CascadeMap`, read from
  ``information_schema`` (so its user needs SELECT on the tables, to see their foreign keys).
- Statements that are logged as such (DDL, ``TRUNCATE``, anything a session logs in statement
  format) are read with the library's table detector: their tables, or every table when unclear.
  Account statements (``GRANT``, ``CREATE USER``...) change nothing a cache reads.
- XA transactions are bumped at ``XA COMMIT`` (everything, if the watcher never saw the prepare).
- An event the reader does not understand (compressed transactions, incidents) invalidates
  everything.

Position: every ``heartbeat_interval`` the watcher records how far it has bumped (the GTID state
on MariaDB, file and offset on MySQL) in Redis, in the namespace, and resumes from there after a
restart: a crash replays the transactions bumped since the last save (extra bumps), never skips
one. When it cannot
resume (no saved position, the binlog purged, another server, a position the server never wrote)
it invalidates the whole namespace and says so in its log, then starts at the server's current
position (read *before* the invalidation, so nothing in between is lost).

Lease: one watcher per namespace and server works; another one waits for the lease to expire and
takes over from the saved position (a standby). Heartbeat: while the watcher is caught up (it has
passed the binlog position the server reported a moment ago) it refreshes a short-lived key that
``QueryCache(require_watcher=True)`` checks in its lookup script.

The engine's own writes come through the binlog too and get a second bump from the watcher, a few
milliseconds after the app's. It is kept: the binlog does not say which client wrote a transaction
(MariaDB's GTID event carries no connection id), so no watcher can tell an app's transaction from
an outside one committed at the same time, and skipping by table and time would lose the latter.
Its cost is measured by ``python -m bench.binlog`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Final

import redis
from sqlalchemy.engine import URL, make_url

from .api import QueryCache
from .cascades import CascadeMap
from .config import normalize_table_name
from .errors import CacheConfigurationError
from .keys import KeyBuilder, server_identity
from .store.scripts import WATCHER_LUA
from .tables import _SYSTEM_SCHEMAS, ALL_TABLES, StatementKind, TableDetector

MISSING_EXTRA: Final = (
    "the binlog watcher needs mysql-replication: pip install 'sa_redis_cache[binlog]'"
)

try:
    import pymysql
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.event import (
        GtidEvent,
        HeartbeatLogEvent,
        MariadbGtidEvent,
        NotImplementedEvent,
        QueryEvent,
        XAPrepareEvent,
        XidEvent,
    )
    from pymysqlreplication.row_event import (
        DeleteRowsEvent,
        PartialUpdateRowsEvent,
        UpdateRowsEvent,
        WriteRowsEvent,
    )
except ModuleNotFoundError as exc:  # the optional extra is not installed
    raise ModuleNotFoundError(MISSING_EXTRA, name=exc.name) from exc

log = logging.getLogger("sa_redis_cache.binlog")
# mysql-replication warns on every connection that column names are not logged: we need none
logging.getLogger("pymysqlreplication").setLevel(logging.ERROR)

_ROW_EVENTS: Final = (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, PartialUpdateRowsEvent)
_EVENTS: Final = [
    *_ROW_EVENTS, XidEvent, QueryEvent, MariadbGtidEvent, GtidEvent, XAPrepareEvent,
    HeartbeatLogEvent, NotImplementedEvent,
]  # fmt: skip
# Event types the reader does not parse that carry no data: MySQL's anonymous GTID, transaction
# context and view change (group replication), ignorable events, heartbeats v2. Any other unknown
# type (compressed transactions, incidents) may hide row changes: it invalidates everything.
_HARMLESS_UNPARSED: Final = frozenset({0x22, 0x24, 0x25, 0x1C, 0x29})
_MARIADB_STANDALONE: Final = 0x01  # a GTID flag: the group is one statement, with no XID event
_ACCOUNT_STATEMENT_RE: Final = re.compile(
    r"^\s*(?:GRANT|REVOKE|FLUSH|SET\s+PASSWORD|SET\s+DEFAULT\s+ROLE"
    r"|(?:CREATE|DROP|ALTER|RENAME)\s+(?:USER|ROLE))\b",
    re.IGNORECASE,
)
_DATABASE_STATEMENT_RE: Final = re.compile(
    r"^\s*(CREATE|DROP|ALTER)\s+(?:DATABASE|SCHEMA)\b", re.IGNORECASE
)
_XA_XID_RE: Final = re.compile(r"X'([0-9A-Fa-f]*)'\s*,\s*X'([0-9A-Fa-f]*)'\s*,\s*(\d+)")
_FIRST_WORD_RE: Final = re.compile(r"^\s*\(*\s*([A-Za-z]+)")
_ACCESS_DENIED: Final = frozenset({1227, 1045, 1044, 1142})
_ER_MASTER_FATAL_READING_BINLOG: Final = 1236
_ER_SAME_SERVER_ID: Final = 4052  # MariaDB; MySQL says it with 1236


class BinlogSetupError(RuntimeError):
    """The database server or the watcher's settings must change before it can run; the message
    is one line saying what to change."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where the watcher is in a server's binlog: after the last transaction it bumped."""

    server: str
    """Fingerprint of the server the position belongs to."""
    file: str
    offset: int
    gtid: str = ""
    """MariaDB's GTID state (``domain-server-sequence`` per domain), from which it resumes."""

    def dump(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def load(cls, raw: bytes | str | None) -> Position | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return cls(str(data["server"]), str(data["file"]), int(data["offset"]), data["gtid"])
        except (ValueError, KeyError, TypeError):
            return None

    def __str__(self) -> str:
        return f"{self.file}:{self.offset}" + (f" (GTID {self.gtid})" if self.gtid else "")


@dataclass(frozen=True, slots=True)
class ServerInfo:
    mariadb: bool
    fingerprint: str
    user: str


class _Stop(Exception):
    """The watcher was asked to stop."""


class _LostLease(Exception):
    """Another watcher holds the lease now: stand by."""


class _Reconnecting:
    """A pymysql connection that reconnects before a cursor if it was lost: the cascade map and
    the position sampling use it now and then, and a server restart must not break them."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = settings
        self._connection: Any = None

    def cursor(self) -> Any:
        if self._connection is not None:
            try:
                self._connection.ping()
            except pymysql.Error:
                self.close()
        if self._connection is None:
            self._connection = pymysql.connect(autocommit=True, **self._settings)
        return self._connection.cursor()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        cursor = self.cursor()
        try:
            cursor.execute(sql)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(pymysql.Error):  # already gone
                connection.close()


class BinlogWatcher:
    """Tails one MySQL/MariaDB server's binlog and bumps what every committed transaction wrote.

    :param database_url: the server, as a SQLAlchemy URL (``mysql+mysqldb://user:pw@host:3306``);
        the user needs REPLICATION SLAVE, REPLICATION CLIENT and SELECT on the watched tables.
    :param redis_client: a ``redis://`` URL or a ``redis.Redis`` client.
    :param namespace: the apps' ``QueryCache`` namespace.
    :param database_id: the server identity the apps use in keys (by default the one
        ``install()`` derives from the URL); give the same ``database_id`` as the apps do.
    :param server_id: the replica server id the watcher announces; no other replica (or watcher
        of another namespace) may use it. By default one derived from namespace and server.
    :param ttl: seconds version keys live (as the apps' ``ttl``).
    :param heartbeat_interval: seconds between the watcher's checks that it is caught up (and the
        server's heartbeats when idle).
    :param heartbeat_ttl: seconds the heartbeat lives: how long ``require_watcher`` readers go on
        using the cache after the watcher died or fell behind.
    :param lease_ttl: seconds a dead watcher's lease blocks a standby.
    :param position_ttl: seconds the saved position outlives the watcher (a missing position
        means a full invalidation at the next start).
    """

    def __init__(
        self,
        database_url: str | URL,
        redis_client: str | redis.Redis,
        *,
        namespace: str = "sa_redis_cache",
        database_id: str | None = None,
        server_id: int | None = None,
        ttl: int = 86400,
        heartbeat_interval: float = 0.5,
        heartbeat_ttl: float = 3.0,
        lease_ttl: float = 10.0,
        position_ttl: float = 7 * 86400,
    ) -> None:
        url = make_url(database_url)
        if url.get_backend_name() not in ("mysql", "mariadb"):
            raise CacheConfigurationError(
                f"the binlog watcher follows MySQL or MariaDB, not {url.get_backend_name()}"
            )
        if not heartbeat_ttl > heartbeat_interval > 0 or not lease_ttl > heartbeat_interval:
            raise CacheConfigurationError(
                "heartbeat_interval must be positive and shorter than heartbeat_ttl and lease_ttl"
            )
        if isinstance(redis_client, str):
            redis_client = redis.Redis.from_url(
                redis_client, socket_timeout=1.0, socket_connect_timeout=1.0, retry=None
            )
        self.server = f"{url.host or 'localhost'}:{url.port or 3306}"
        self.database_id = database_id or server_identity(url)
        if server_id is None:
            digest = hashlib.blake2b(f"{namespace}\0{self.database_id}".encode(), digest_size=4)
            server_id = 1_000_000_000 + int.from_bytes(digest.digest()) % 1_000_000_000
        if isinstance(server_id, bool) or not 0 < server_id < 2**32:
            raise CacheConfigurationError(f"server_id must be in 1..4294967295; got {server_id!r}")
        self.server_id = server_id
        self.namespace = namespace
        cache = QueryCache(redis_client, namespace=namespace, ttl=ttl, retry_after=0.5)
        self._invalidator = cache.server_invalidator(self.database_id)
        self._client = redis_client
        self._script = redis_client.register_script(WATCHER_LUA)
        keys = KeyBuilder(namespace, self.database_id, "", "")
        self._keys = [keys.watcher("lease"), keys.watcher("position"), keys.heartbeat]
        self._token = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._settings: dict[str, Any] = {
            "host": url.host or "localhost",
            "port": url.port or 3306,
            "user": url.username or "root",
            "password": url.password or "",
            "connect_timeout": 5,
        }
        if socket_path := url.query.get("unix_socket"):
            self._settings["unix_socket"] = str(socket_path)
        self._sql = _Reconnecting(self._settings)
        self._status_sql = "SHOW BINARY LOG STATUS"  # MySQL 8.2+ (SHOW MASTER STATUS is gone)
        self._server_is_mariadb = False  # known from check_server()
        self._cascades = CascadeMap(
            "mysql", _qualified_name, "", is_mariadb=lambda: self._server_is_mariadb
        )
        self._detector = TableDetector("mysql", None)
        self._interval = heartbeat_interval
        self._heartbeat_ms = int(heartbeat_ttl * 1000)
        self._lease_ms = int(lease_ttl * 1000)
        self._position_ms = int(position_ttl * 1000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        """What ended a watcher started with :meth:`start`, if anything did."""
        # counters, for logs, tests and the walkthrough
        self.transactions = 0
        self.bumps = 0
        self.full_invalidations = 0
        self.caught_up = False
        self._reset_stream_state(None)
        self._xa_prepared: dict[tuple[str, str, str], frozenset[str]] = {}
        self._warned: set[str] = set()

    # -- running -----------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Follow the binlog until ``stop`` is set (or :meth:`stop` is called).

        Waits while another watcher holds the lease. Raises :class:`BinlogSetupError` when the
        server or the settings must change; every other failure (database or Redis down) is
        logged and retried.
        """
        if stop is not None:
            self._stop = stop
        standing_by = False
        backoff = self._interval
        try:
            while not self._stop.is_set():
                holder = self._hold()
                if holder is None:
                    self._stop.wait(self._interval)
                    continue
                if holder != self._token:
                    if not standing_by:
                        log.info(
                            "standing by: watcher %s holds the lease for %s", holder, self._where
                        )
                        standing_by = True
                    self._stop.wait(self._interval)
                    continue
                standing_by = False
                log.info(
                    "holding the lease for %s; following the binlog of %s", self._where, self.server
                )
                try:
                    self._follow()
                    backoff = self._interval
                except _LostLease:
                    log.warning("another watcher took the lease for %s; standing by", self._where)
                except _Stop:
                    break
                except BinlogSetupError:
                    raise
                except (pymysql.Error, redis.RedisError, OSError, RuntimeError) as exc:
                    log.warning("%s; starting again in %.1fs", _describe(exc), backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
        finally:
            self.caught_up = False
            self._release()
            self._sql.close()
            log.info("stopped at %s", self._position)

    def start(self) -> BinlogWatcher:
        """Run in a daemon thread of this process; :meth:`stop` ends it."""
        self._stop.clear()

        def target() -> None:
            try:
                self.run()
            except BaseException as exc:  # kept for the owner; a thread has nobody to raise to
                self.error = exc
                log.error("the binlog watcher stopped: %s", exc)

        self._thread = threading.Thread(target=target, name="sa-redis-cache-binlog", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def _where(self) -> str:
        return f"namespace {self.namespace!r}, database {self.database_id}"

    # -- following one server ----------------------------------------------------------------

    def _follow(self) -> None:
        """Stream while this watcher holds the lease; returns when asked to stop."""
        info = self.check_server()
        saved = Position.load(self._client.get(self._keys[1]))
        reason = self._cannot_resume(saved, info)
        if reason or saved is None:
            start = self._start_over(info, reason)
        else:
            start = saved
            log.info("resuming at %s", start)
        self._cascades.forget()
        while True:
            stream = self._open(start, info)
            try:
                self._read(stream)
                return
            except pymysql.err.OperationalError as exc:
                code, message = exc.args[0], str(exc.args[-1])
                if code == _ER_SAME_SERVER_ID or "same server" in message:
                    if self._hold() != self._token:
                        raise _LostLease from exc  # our standby connected: it replaced us
                    raise BinlogSetupError(
                        f"another replica (or a watcher of another namespace) is connected to "
                        f"{self.server} with server id {self.server_id}: give this watcher a "
                        f"--server-id nobody else uses"
                    ) from exc
                if code in _ACCESS_DENIED:
                    raise BinlogSetupError(_privileges_message(info.user, message)) from exc
                if code != _ER_MASTER_FATAL_READING_BINLOG:
                    raise
                start = self._start_over(info, f"the server cannot resume at {start}: {message}")
            except (_Stop, _LostLease, BinlogSetupError, pymysql.Error, redis.RedisError, OSError):
                raise
            except Exception as exc:  # an event the reader cannot parse: never skip it silently
                log.exception("cannot read the binlog after %s", self._position)
                start = self._start_over(info, f"an unreadable binlog event ({exc!r})")
            finally:
                stream.close()

    def _open(self, start: Position, info: ServerInfo) -> BinLogStreamReader:
        self._reset_stream_state(start)
        settings = {**self._settings, "read_timeout": max(10.0, 4 * self._interval)}
        options: dict[str, Any] = (
            {"is_mariadb": True, "auto_position": start.gtid}
            if info.mariadb
            else {"log_file": start.file, "log_pos": start.offset, "resume_stream": True}
        )
        return BinLogStreamReader(
            connection_settings=settings,
            server_id=self.server_id,
            blocking=True,
            only_events=_EVENTS,
            filter_non_implemented_events=False,
            slave_heartbeat=self._interval,
            enable_logging=False,
            **options,
        )

    def _read(self, stream: BinLogStreamReader) -> None:
        while not self._stop.is_set():
            event = stream.fetchone()
            if event is None:  # only a non-blocking stream ends
                return
            self._handle(event, stream)
            self._tick(stream)

    # -- events in, table sets out --------------------------------------------------------------

    def _reset_stream_state(self, start: Position | None) -> None:
        self._position = start
        self._dirty = start is not None
        self._pending: set[str] = set()
        self._in_transaction = False
        self._group_gtid: tuple[int, str] | None = None
        self._gtid_state: dict[int, str] = _parse_gtid_state(start.gtid if start else "")
        self._target: tuple[int, int] | None = None
        self._last_tick = 0.0
        self._last_report = time.monotonic()
        self._was_caught_up = False

    def _handle(self, event: Any, stream: BinLogStreamReader) -> None:
        if isinstance(event, _ROW_EVENTS):
            self._pending.add(_qualified_name(event.table, event.schema))
        elif isinstance(event, XidEvent):
            self._end_group(stream)
        elif isinstance(event, MariadbGtidEvent):
            self._begin_group((event.domain_id, event.gtid))
            self._in_transaction = not event.flags & _MARIADB_STANDALONE
        elif isinstance(event, GtidEvent):
            self._begin_group(None)
        elif isinstance(event, QueryEvent):
            self._query(event, stream)
        elif isinstance(event, XAPrepareEvent):
            if event.one_phase:
                self._end_group(stream)
            else:  # its rows become visible at XA COMMIT, a later group
                key = (event.xid_gtrid.hex(), event.xid_bqual.hex(), str(event.xid_format_id))
                self._xa_prepared[key] = frozenset(self._pending)
                self._pending.clear()
                self._end_group(stream)
        elif isinstance(event, NotImplementedEvent):
            if event.event_type == 0x22:  # MySQL's anonymous GTID: a group begins
                self._begin_group(None)
            elif event.event_type not in _HARMLESS_UNPARSED:
                self._warn_once(
                    f"type{event.event_type}",
                    f"binlog event type {event.event_type} cannot be read (a compressed "
                    f"transaction? then turn binlog compression off); invalidating everything",
                )
                self._pending.add(ALL_TABLES)
                if not self._in_transaction:
                    self._end_group(stream)

    def _begin_group(self, gtid: tuple[int, str] | None) -> None:
        if self._pending:  # a group that never ended: bump what it wrote all the same
            self._bump(frozenset(self._pending))
            self._pending.clear()
        self._group_gtid = gtid
        self._in_transaction = False

    def _end_group(self, stream: BinLogStreamReader) -> None:
        """A transaction committed: bump what it wrote, then move the position past it."""
        tables = frozenset(self._pending)
        self._pending.clear()
        self._in_transaction = False
        if tables:
            self._bump(tables)
        self.transactions += 1
        if self._group_gtid is not None:
            domain, gtid = self._group_gtid
            self._gtid_state[domain] = gtid
            self._group_gtid = None
            # mysql-replication reconnects by itself after a lost connection: from here
            stream.auto_position = ",".join(self._gtid_state.values())
        if self._position is not None and stream.log_file:
            self._position = Position(
                self._position.server,
                stream.log_file,
                int(stream.log_pos or 0),
                ",".join(self._gtid_state.values()),
            )
            self._dirty = True

    def _query(self, event: QueryEvent, stream: BinLogStreamReader) -> None:
        sql = event.query
        word = _first_word(sql)
        if word == "BEGIN":
            self._in_transaction = True
        elif word == "COMMIT":
            self._end_group(stream)
        elif word == "ROLLBACK":  # non-transactional tables keep what was written to them
            if not re.match(r"\s*ROLLBACK\s+(WORK\s+)?TO\b", sql, re.IGNORECASE):
                self._end_group(stream)
        elif word in ("SAVEPOINT", "RELEASE"):
            pass
        elif word == "XA":
            self._xa_statement(sql, stream)
        else:
            schema = event.schema.decode() if isinstance(event.schema, bytes) else event.schema
            self._pending |= self._statement_tables(sql, schema)
            if not self._in_transaction:
                self._end_group(stream)

    def _xa_statement(self, sql: str, stream: BinLogStreamReader) -> None:
        action = sql.split()[1].upper() if len(sql.split()) > 1 else ""
        if action not in ("COMMIT", "ROLLBACK"):
            return  # XA START / END: the rows follow, and the prepare ends the group
        match = _XA_XID_RE.search(sql)
        key = (match.group(1).lower(), match.group(2).lower(), match.group(3)) if match else None
        prepared = self._xa_prepared.pop(key, None) if key else None
        if action == "COMMIT":
            # prepared before this watcher's position: nobody knows what it wrote
            self._pending |= prepared if prepared is not None else {ALL_TABLES}
        self._end_group(stream)

    def _statement_tables(self, sql: str, schema: str) -> frozenset[str]:
        """The tables a logged statement changed: qualified names, or every table if unclear."""
        if _ACCOUNT_STATEMENT_RE.match(sql):
            return frozenset()
        database = _DATABASE_STATEMENT_RE.match(sql)
        if database:
            return frozenset() if database.group(1).upper() == "CREATE" else _everything()
        plan = self._detector.plan(sql)
        if plan.kind in (StatementKind.READ, StatementKind.OTHER):
            return frozenset()
        if plan.kind is StatementKind.DDL or ALL_TABLES in plan.tables:
            self._cascades.forget()  # a foreign key may have come or gone
        if ALL_TABLES in plan.tables:
            return _everything()
        tables = set()
        for name in plan.tables:
            if "." not in name and not schema:
                return _everything()  # an unqualified name with no default schema
            tables.add(name if "." in name else _qualified_name(name, schema))
        return frozenset(tables)

    def _bump(self, tables: frozenset[str]) -> None:
        """Bump ``tables`` and the tables their cascades reach; retry until Redis has it."""
        named = frozenset(t for t in tables if t.split(".", 1)[0] not in _SYSTEM_SCHEMAS)
        if not named:
            return
        expanded = self._cascades.expand(named, self._sql)
        delay = 0.05
        while not self._invalidator.publish(expanded):
            if self._stop.wait(delay):
                raise _Stop
            delay = min(delay * 2, 1.0)
        self.bumps += 1
        if ALL_TABLES in expanded:
            self.full_invalidations += 1
        log.debug("bumped %s", ", ".join(sorted(expanded)))

    # -- lease, position and heartbeat ---------------------------------------------------------

    def _tick(self, stream: BinLogStreamReader, force: bool = False) -> None:
        """Every ``heartbeat_interval``: renew the lease, save the position, and refresh the
        heartbeat if the watcher has passed the binlog position the server reported last."""
        now = time.monotonic()
        if not force and now - self._last_tick < self._interval:
            return
        self._last_tick = now
        caught_up = False
        if stream.log_file and stream.log_pos:
            here = (_file_number(stream.log_file), int(stream.log_pos))
            if self._target is not None and here >= self._target:
                caught_up = True
            try:  # the next target: where the server is now
                self._target = self._server_position()
            except pymysql.Error as exc:
                self._target = None
                log.warning("cannot read the server's binlog position: %s", exc)
            if not caught_up and self._target is not None and here >= self._target:
                caught_up = True
        if caught_up != self.caught_up:
            log.log(
                logging.INFO if caught_up and not self._was_caught_up else logging.DEBUG,
                "caught up with %s" if caught_up else "behind %s",
                self.server,
            )
            self._was_caught_up |= caught_up
        self.caught_up = caught_up
        position = self._position.dump() if self._dirty and self._position else ""
        try:
            held = self._call_script("hold", position, self._heartbeat_ms if caught_up else 0)
        except redis.RedisError as exc:
            log.warning("cannot renew the lease in Redis: %s", exc)
            return
        if not held:
            raise _LostLease
        self._dirty = False
        if now - self._last_report >= 60:
            self._last_report = now
            log.info(
                "%d transactions, %d bumps, at %s", self.transactions, self.bumps, self._position
            )

    def _hold(self) -> str | None:
        """Take or renew the lease; the holder's token (None if Redis cannot be asked)."""
        try:
            if self._call_script("hold", "", 0):
                self._warned.discard("redis")
                return self._token
            holder = self._client.get(self._keys[0])
        except redis.RedisError as exc:
            self._warn_once("redis", f"cannot reach Redis for the lease: {exc}; trying on")
            return None
        self._warned.discard("redis")
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    def _release(self) -> None:
        try:
            if self._dirty and self._position is not None:
                self._call_script("hold", self._position.dump(), 0)
            self._call_script("release", "", 0)
        except redis.RedisError as exc:
            log.warning("could not release the lease: %s", exc)

    def _call_script(self, mode: str, position: str, heartbeat_ms: int) -> bool:
        args: list[str | int] = [
            self._token, mode, self._lease_ms, position, self._position_ms, heartbeat_ms,
        ]  # fmt: skip
        return bool(self._script(keys=self._keys, args=args))

    # -- the server ------------------------------------------------------------------------------

    def check_server(self) -> ServerInfo:
        """Raise :class:`BinlogSetupError` unless the server can be followed: binlog on, ROW
        format, no binlog compression, the privileges, a server id of the watcher's own."""
        try:
            (version, log_bin, binlog_format, own_id, user, hostname), *_ = self._sql.query(
                "SELECT VERSION(), @@log_bin, @@binlog_format, @@server_id, CURRENT_USER(), "
                "@@hostname"
            )
        except pymysql.err.OperationalError as exc:
            if exc.args[0] in _ACCESS_DENIED:
                raise BinlogSetupError(
                    f"cannot log in to {self.server}: {exc.args[-1]} (check --database-url)"
                ) from exc
            raise
        mariadb = self._server_is_mariadb = "mariadb" in str(version).lower()
        if not int(log_bin):
            raise BinlogSetupError(
                f"binary logging is off on {self.server}: start the server with log_bin "
                f"(--log-bin, or log_bin in its configuration), binlog_format=ROW and a server_id"
            )
        if str(binlog_format).upper() != "ROW":
            raise BinlogSetupError(
                f"binlog_format is {binlog_format} on {self.server}: set binlog_format=ROW in the "
                f"server's configuration (or SET GLOBAL binlog_format=ROW, then reconnect writers)"
            )
        if int(own_id) == self.server_id:
            raise BinlogSetupError(
                f"--server-id {self.server_id} is the server_id of {self.server} itself: give "
                f"the watcher an id no server or replica uses"
            )
        for variable in ("log_bin_compress", "binlog_transaction_compression"):
            rows = self._sql.query(f"SHOW GLOBAL VARIABLES LIKE '{variable}'")
            if rows and str(rows[0][1]).upper() == "ON":
                raise BinlogSetupError(
                    f"{variable} is ON on {self.server}: the watcher cannot read compressed "
                    f"events; set {variable}=OFF"
                )
        user = _quoted_account(str(user))
        try:
            self._server_position()
        except pymysql.err.OperationalError as exc:
            if exc.args[0] in _ACCESS_DENIED:
                raise BinlogSetupError(_privileges_message(user, str(exc.args[-1]))) from exc
            raise
        if mariadb:
            fingerprint = f"mariadb server_id={own_id} host={hostname}"
        else:
            fingerprint = f"mysql {self._sql.query('SELECT @@server_uuid')[0][0]}"
        return ServerInfo(mariadb, fingerprint, user)

    def _cannot_resume(self, saved: Position | None, info: ServerInfo) -> str:
        """Why the saved position cannot be resumed from ('' if it can be)."""
        if saved is None:
            return "no saved binlog position"
        if saved.server != info.fingerprint:
            return f"the saved position is from {saved.server}, not {info.fingerprint}"
        if info.mariadb and saved.gtid:
            return ""  # the server checks the GTID state itself, and says when it cannot
        # file and offset (MySQL, or MariaDB before its first GTID, which resumes from the first
        # binlog left: it would not notice that older ones were purged)
        logs = {str(name): int(size) for name, size, *_ in self._sql.query("SHOW BINARY LOGS")}
        if saved.file not in logs:
            return f"binlog {saved.file} is no longer on the server (purged)"
        if saved.offset > logs[saved.file]:
            return f"the saved position {saved} is past the end of {saved.file}"
        return ""

    def _start_over(self, info: ServerInfo, reason: str) -> Position:
        """Start at the server's current position after invalidating everything: a write
        committed before the position is covered by the invalidation, one after it by the
        stream."""
        gtid = ""
        if info.mariadb:
            gtid = str(self._sql.query("SELECT @@gtid_binlog_pos")[0][0] or "")
        file, offset = self._server_position(raw=True)
        start = Position(info.fingerprint, file, offset, gtid)
        log.warning(
            "%s: invalidating everything in namespace %r, then following from %s",
            reason,
            self.namespace,
            start,
        )
        self._bump(_everything())
        self._position, self._dirty = start, True
        if not self._call_script("hold", start.dump(), 0):
            raise _LostLease
        self._dirty = False
        return start

    def _server_position(self, raw: bool = False) -> Any:
        """``(file number, offset)`` the server's binlog has reached (``(file, offset)`` with
        ``raw``)."""
        cursor = self._sql.cursor()
        try:
            try:
                cursor.execute(self._status_sql)
            except pymysql.err.ProgrammingError:
                if self._status_sql == "SHOW MASTER STATUS":
                    raise
                self._status_sql = "SHOW MASTER STATUS"  # MariaDB, MySQL before 8.2
                cursor.execute(self._status_sql)
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None:
            raise BinlogSetupError(f"binary logging is off on {self.server}")
        if raw:
            return str(row[0]), int(row[1])
        return _file_number(str(row[0])), int(row[1])

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)


def _everything() -> frozenset[str]:
    return frozenset({ALL_TABLES})


def _qualified_name(name: str, schema: str | None) -> str:
    return f"{normalize_table_name(schema or '')}.{normalize_table_name(name)}"


def _first_word(sql: str) -> str:
    match = _FIRST_WORD_RE.match(sql)
    return match.group(1).upper() if match else ""


def _file_number(name: str) -> int:
    """``binlog.000042`` -> 42: binlog files of one server are numbered in order."""
    suffix = name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def _parse_gtid_state(state: str) -> dict[int, str]:
    gtids: dict[int, str] = {}
    for gtid in filter(None, (part.strip() for part in state.split(","))):
        domain = gtid.split("-", 1)[0]
        if domain.isdigit():
            gtids[int(domain)] = gtid
    return gtids


def _quoted_account(account: str) -> str:
    user, _, host = account.rpartition("@")
    return f"'{user}'@'{host}'" if user else f"'{account}'"


def _privileges_message(user: str, detail: str) -> str:
    return (
        f"{user} may not read the binlog ({detail}): GRANT REPLICATION SLAVE, REPLICATION CLIENT "
        f"ON *.* TO {user}"
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pymysql.Error) and exc.args:
        return f"database error {exc.args[0]}: {exc.args[-1]}"
    return f"{type(exc).__name__}: {exc}"
