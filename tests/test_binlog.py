"""The binlog watcher: writes the cache cannot see (raw MySQLdb, the ``mysql`` command line,
triggers, stored procedures, events, TRUNCATE, ALTER TABLE, foreign-key cascades, XA) reach cached
reads once the watcher has passed them on; it resumes after SIGKILL without missing a table,
invalidates everything when it cannot resume, hands over to a standby, keeps ``require_watcher``
readers off the cache while it is dead, and says in one line what to change when the server is not
set up for it.

Everything runs on a throwaway MariaDB with its binlog on (never the shared server on 3306), with
the watcher as a subprocess started through its console script.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import MySQLdb
import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from example_app.mariadb import ServerMissing, ThrowawayMariaDB
from sa_redis_cache import QueryCache
from sa_redis_cache.cli import cli
from sa_redis_cache.testing import service_missing
from tests.conftest import MYSQL_URL, DatabaseReads, caching_sessionmaker, unique_namespace
from tests.consistency import WATCHER_LAG_BOUND, Settings, run

pytestmark = pytest.mark.slow

SCRIPT = Path(sys.executable).parent / "sa-redis-cache"
QUICK = ("--lease-ttl", "2", "--heartbeat-ttl", "1")
"""A killed watcher's lease and heartbeat outlive it by seconds, not the default 10 and 3."""
SHOP = "binlog_shop"
SCHEMA = [
    "CREATE TABLE dept (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL)",
    "CREATE TABLE emp (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, dept_id INT NOT NULL,"
    " FOREIGN KEY (dept_id) REFERENCES dept(id) ON DELETE CASCADE)",
    "CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(80))",
    "CREATE TABLE notes (id INT PRIMARY KEY, body VARCHAR(40)) ENGINE=MyISAM",
    "CREATE TRIGGER emp_audit AFTER UPDATE ON emp FOR EACH ROW"
    " INSERT INTO audit (msg) VALUES (CONCAT('renamed ', NEW.name))",
    "INSERT INTO dept VALUES (1, 'sales'), (2, 'ops')",
    "INSERT INTO emp VALUES (1, 'ann', 1), (2, 'bob', 2), (3, 'cid', 2)",
    "INSERT INTO notes VALUES (1, 'first')",
    *(f"CREATE TABLE t{i} (id INT PRIMARY KEY, n INT NOT NULL)" for i in range(8)),
    *(f"INSERT INTO t{i} VALUES (1, 0)" for i in range(8)),
]


# -- servers, processes, helpers -------------------------------------------------------------


@pytest.fixture(scope="session")
def binlog_server() -> Iterator[ThrowawayMariaDB]:
    try:
        server = ThrowawayMariaDB(driver="mysqldb").start()
    except ServerMissing as exc:
        service_missing("a MariaDB server binary (for a throwaway server with a binlog)", exc)
    yield server
    server.remove()


def connect(server: ThrowawayMariaDB, db: str | None = SHOP, **kw: Any) -> Any:
    """A raw MySQLdb connection: a client that knows nothing of SQLAlchemy or the cache."""
    options: dict[str, Any] = {"host": "127.0.0.1", "port": server.port, "user": "root", **kw}
    if db:
        options["database"] = db
    return MySQLdb.connect(**options)


def run_sql(server: ThrowawayMariaDB, *statements: str, db: str | None = SHOP) -> None:
    conn = connect(server, db)
    try:
        cursor = conn.cursor()
        for statement in statements:
            cursor.execute(statement)
        conn.commit()
    finally:
        conn.close()


@pytest.fixture
def shop(binlog_server: ThrowawayMariaDB) -> Iterator[Engine]:
    """A fresh database on the throwaway server, and an engine on it (no cache installed)."""
    run_sql(binlog_server, f"DROP DATABASE IF EXISTS {SHOP}", f"CREATE DATABASE {SHOP}", db=None)
    run_sql(binlog_server, *SCHEMA)
    engine = create_engine(f"{binlog_server.url}{SHOP}")
    yield engine
    engine.dispose()


class Watcher:
    """``sa-redis-cache watch-binlog`` in a subprocess, its log in a file."""

    def __init__(self, server: ThrowawayMariaDB, redis_url: str, namespace: str | None,
                 directory: Path, *args: str, env: dict[str, str] | None = None,
                 ) -> None:  # fmt: skip
        self.log_path = directory / f"watcher-{uuid.uuid4().hex[:8]}.log"
        command = [str(SCRIPT), "-v", "watch-binlog", "--database-url", server.url,
                   "--redis-url", redis_url, *args]  # fmt: skip
        if namespace is not None:
            command += ["--namespace", namespace]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 30, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log.count(needle) < count:
            if self.process.poll() is not None:
                pytest.fail(f"the watcher exited ({self.process.returncode}):\n{self.log}")
            if time.monotonic() > deadline:
                pytest.fail(f"the watcher never logged {needle!r}:\n{self.log}")
            time.sleep(0.02)  # polling toward a deadline

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


@pytest.fixture
def watchers(
    binlog_server: ThrowawayMariaDB, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., Watcher]]:
    started: list[Watcher] = []

    def start(namespace: str | None, *args: str, **kw: Any) -> Watcher:
        watcher = Watcher(binlog_server, redis_url, namespace, tmp_path, *args, **kw)
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.kill()


@pytest.fixture
def cache_on(redis_url: str) -> Iterator[Callable[..., QueryCache]]:
    made: list[tuple[QueryCache, Engine]] = []

    def make(engine: Engine, namespace: str, **options: Any) -> QueryCache:
        cache = QueryCache.from_url(redis_url, namespace=namespace, **options)
        cache.install(engine)
        made.append((cache, engine))
        return cache

    yield make
    for cache, engine in made:
        cache.uninstall(engine)
        cache.clear()


def eventually(read: Callable[[], Any], expected: Any, timeout: float = 15) -> None:
    """Poll ``read`` until it returns ``expected``; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected:
        if time.monotonic() > deadline:
            assert value == expected, f"still {value!r} after {timeout}s"
        time.sleep(0.02)  # polling toward a deadline


def reader(engine: Engine, sql: str) -> Callable[[], list[tuple[Any, ...]]]:
    sessions = caching_sessionmaker(engine)

    def read() -> list[tuple[Any, ...]]:
        with sessions() as session:
            return [tuple(row) for row in session.execute(text(sql))]

    return read


def cached_read(cache: QueryCache, read: Callable[[], Any]) -> Any:
    """Read until the answer comes from the cache (the watcher may still be bumping the tables
    the fixture just created); return it."""
    deadline = time.monotonic() + 15
    while True:
        before = cache.stats()["hits"]
        value = read()
        if cache.stats()["hits"] > before:
            return value
        assert time.monotonic() < deadline, "the read never came from the cache"
        time.sleep(0.02)  # polling toward a deadline


# -- every way of writing without the cache --------------------------------------------------


def mysql_command_line(server: ThrowawayMariaDB, sql: str) -> None:
    client = shutil.which("mysql") or shutil.which("mariadb")
    assert client, "the mysql command line client is installed with MariaDB"
    subprocess.run(
        [client, "-h127.0.0.1", f"-P{server.port}", "-uroot", SHOP, "-e", sql],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


def statement_format_session(server: ThrowawayMariaDB) -> None:
    run_sql(server, "SET SESSION binlog_format = 'STATEMENT'", "UPDATE dept SET name = 'stmt'")


OUTSIDE_WRITES: dict[str, tuple[Callable[[ThrowawayMariaDB], None], str, list[tuple[Any, ...]]]] = {
    "raw MySQLdb": (
        lambda s: run_sql(s, "UPDATE dept SET name = 'raw' WHERE id = 1"),
        "SELECT id, name FROM dept ORDER BY id", [(1, "raw"), (2, "ops")],
    ),
    "mysql command line": (
        lambda s: mysql_command_line(s, "INSERT INTO dept VALUES (3, 'cli')"),
        "SELECT id, name FROM dept ORDER BY id", [(1, "sales"), (2, "ops"), (3, "cli")],
    ),
    "trigger": (
        lambda s: run_sql(s, "UPDATE emp SET name = 'anne' WHERE id = 1"),
        "SELECT msg FROM audit ORDER BY id", [("renamed anne",)],
    ),
    "stored procedure": (
        lambda s: run_sql(
            s, "CREATE PROCEDURE close_ops() DELETE FROM emp WHERE dept_id = 2", "CALL close_ops()"
        ),
        "SELECT id FROM emp ORDER BY id", [(1,)],
    ),
    "event": (
        lambda s: run_sql(
            s, "CREATE EVENT later ON SCHEDULE AT CURRENT_TIMESTAMP + INTERVAL 1 SECOND "
            "DO UPDATE dept SET name = 'evented' WHERE id = 2",
        ),
        "SELECT name FROM dept WHERE id = 2", [("evented",)],
    ),
    "TRUNCATE": (
        lambda s: run_sql(s, "TRUNCATE TABLE emp"),
        "SELECT COUNT(*) FROM emp", [(0,)],
    ),
    "ALTER TABLE": (
        lambda s: run_sql(s, "ALTER TABLE dept ADD COLUMN code INT NOT NULL DEFAULT 7"),
        "SELECT * FROM dept WHERE id = 1", [(1, "sales", 7)],
    ),
    "foreign-key cascade": (
        lambda s: run_sql(s, "DELETE FROM dept WHERE id = 2"),
        "SELECT id FROM emp ORDER BY id", [(1,)],
    ),
    "two tables in one transaction": (
        lambda s: run_sql(
            s, "UPDATE dept SET name = 'x' WHERE id = 1", "UPDATE emp SET dept_id = 1 WHERE id = 2"
        ),
        "SELECT e.id, d.name FROM emp e JOIN dept d ON d.id = e.dept_id ORDER BY e.id",
        [(1, "x"), (2, "x"), (3, "ops")],
    ),
    "MyISAM (no transaction)": (
        lambda s: run_sql(s, "INSERT INTO notes VALUES (2, 'second')"),
        "SELECT body FROM notes ORDER BY id", [("first",), ("second",)],
    ),
    "a session in statement format": (
        statement_format_session,
        "SELECT DISTINCT name FROM dept", [("stmt",)],
    ),
    "XA transaction": (
        lambda s: run_sql(
            s, "XA START 'x1'", "UPDATE dept SET name = 'xa' WHERE id = 1", "XA END 'x1'",
            "XA PREPARE 'x1'", "XA COMMIT 'x1'",
        ),
        "SELECT name FROM dept WHERE id = 1", [("xa",)],
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def shared_namespace() -> str:
    return unique_namespace("test-binlog")


@pytest.fixture(scope="module")
def module_watcher(
    binlog_server: ThrowawayMariaDB, redis_url: str, shared_namespace: str, tmp_path_factory: Any
) -> Iterator[Watcher]:
    """One watcher for the tests that only write and read."""
    watcher = Watcher(binlog_server, redis_url, shared_namespace, tmp_path_factory.mktemp("w"))
    watcher.wait_for("caught up")
    yield watcher
    watcher.kill()
    QueryCache.from_url(redis_url, namespace=shared_namespace).clear()


@pytest.mark.parametrize("how", list(OUTSIDE_WRITES))
def test_an_outside_write_reaches_the_cached_read(
    how: str,
    binlog_server: ThrowawayMariaDB,
    shop: Engine,
    module_watcher: Watcher,
    shared_namespace: str,
    cache_on: Callable[..., QueryCache],
) -> None:
    write, sql, expected = OUTSIDE_WRITES[how]
    cache = cache_on(shop, shared_namespace)
    read = reader(shop, sql)
    before = cached_read(cache, read)
    assert before != expected
    write(binlog_server)
    eventually(read, expected)


def test_no_read_staler_than_the_lag_bound_with_an_external_writer(
    binlog_server: ThrowawayMariaDB,
    module_watcher: Watcher,
    shared_namespace: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """The consistency checker with a writer that bypasses SQLAlchemy: its commits may be missed
    for at most WATCHER_LAG_BOUND (the README's bound), the app writer's never."""
    run_sql(binlog_server, "CREATE DATABASE IF NOT EXISTS binlog_consistency", db=None)
    settings = Settings(
        database_url=f"{binlog_server.url}binlog_consistency",
        redis_url=redis_url,
        namespace=shared_namespace,
        readers=3,
        writers=1,
        external_writers=1,
        reads_per_reader=1200,
        log_dir=str(tmp_path),
        lag_bound=WATCHER_LAG_BOUND,
    )
    report = run(settings)
    print(report.summary())
    assert report.reads >= 3600 and report.external_commits >= 20
    assert report.stale == []
    assert report.hit_rate >= 0.2, report.summary()  # the cache served a fair share


# -- restarts, purges, standbys -----------------------------------------------------------------


def counters(engine: Engine) -> Callable[[], list[int]]:
    reads = [reader(engine, f"SELECT n FROM t{i}") for i in range(8)]
    return lambda: [read()[0][0] for read in reads]


def database_counters(server: ThrowawayMariaDB) -> list[int]:
    conn = connect(server)
    try:
        cursor = conn.cursor()
        values = []
        for i in range(8):
            cursor.execute(f"SELECT n FROM t{i}")
            values.append(cursor.fetchone()[0])
        return values
    finally:
        conn.close()


def test_killed_mid_stream_and_restarted_it_misses_no_table(
    binlog_server: ThrowawayMariaDB,
    shop: Engine,
    watchers: Callable[..., Watcher],
    cache_on: Callable[..., QueryCache],
) -> None:
    namespace = unique_namespace("test-binlog-kill")
    cache = cache_on(shop, namespace)
    first = watchers(namespace, *QUICK)
    first.wait_for("caught up")
    read_all = counters(shop)
    cached_read(cache, read_all)  # every table has an entry

    stop = threading.Event()

    def write_all_tables() -> None:
        conn = connect(binlog_server)
        cursor = conn.cursor()
        i = 0
        while not stop.is_set():
            cursor.execute(f"UPDATE t{i % 8} SET n = n + 1")
            conn.commit()
            i += 1
        conn.close()

    writer = threading.Thread(target=write_all_tables)
    writer.start()
    try:
        first.wait_for("bumped", count=40)  # it is streaming: kill it in the middle
        first.kill()
        # the writer goes on while it is dead
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        writer.join()
    read_all()  # entries for the values now, some of them stored before unbumped writes
    run_sql(binlog_server, *(f"UPDATE t{i} SET n = n + 1000" for i in range(8)))
    assert read_all() != database_counters(binlog_server)  # stale until a watcher passes

    second = watchers(namespace, *QUICK)
    second.wait_for("resuming at")
    eventually(read_all, database_counters(binlog_server))
    assert "invalidating everything" not in second.log  # it resumed, it did not start over


def test_binlog_purged_while_down_invalidates_everything(
    binlog_server: ThrowawayMariaDB,
    shop: Engine,
    watchers: Callable[..., Watcher],
    cache_on: Callable[..., QueryCache],
) -> None:
    namespace = unique_namespace("test-binlog-purge")
    cache = cache_on(shop, namespace)
    first = watchers(namespace, *QUICK)
    first.wait_for("caught up")
    read_dept = reader(shop, "SELECT name FROM dept WHERE id = 1")
    read_notes = reader(shop, "SELECT body FROM notes")
    cached_read(cache, read_dept)
    cached_read(cache, read_notes)
    first.kill()

    run_sql(binlog_server, "UPDATE dept SET name = 'while down' WHERE id = 1")
    conn = connect(binlog_server)
    try:
        cursor = conn.cursor()
        cursor.execute("FLUSH BINARY LOGS")
        cursor.execute("SHOW MASTER STATUS")
        current = cursor.fetchone()[0]

        def purge() -> list[str]:
            # MariaDB keeps a log until its binlog checkpoint and while a dump thread reads it
            cursor.execute(f"PURGE BINARY LOGS TO '{current}'")
            cursor.execute("SHOW BINARY LOGS")
            return [row[0] for row in cursor.fetchall()]

        eventually(purge, [current])
    finally:
        conn.close()

    second = watchers(namespace, *QUICK)
    second.wait_for("invalidating everything")
    assert "cannot resume" in second.log
    eventually(read_dept, [("while down",)])
    counter = DatabaseReads(shop)
    read_notes()  # a table nobody wrote: its entry died with everything else
    counter.close()
    assert counter.count == 1


def test_a_position_from_another_server_invalidates_everything(
    shop: Engine,
    redis_url: str,
    watchers: Callable[..., Watcher],
    cache_on: Callable[..., QueryCache],
) -> None:
    namespace = unique_namespace("test-binlog-moved")
    cache = cache_on(shop, namespace)
    first = watchers(namespace, *QUICK)
    first.wait_for("caught up")
    read_notes = reader(shop, "SELECT body FROM notes")
    cached_read(cache, read_notes)
    first.stop()  # a clean stop saves the position
    client = redis.Redis.from_url(redis_url)
    (key,) = client.keys("{" + namespace + "}:binlog:*:position")
    position = json.loads(client.get(key))
    client.set(key, json.dumps({**position, "server": "mariadb server_id=9 host=elsewhere"}))

    second = watchers(namespace, *QUICK)
    second.wait_for("invalidating everything")
    assert "is from mariadb server_id=9 host=elsewhere" in second.log
    counter = DatabaseReads(shop)
    read_notes()
    counter.close()
    assert counter.count == 1


def test_require_watcher_reads_the_database_while_no_watcher_is_alive(
    binlog_server: ThrowawayMariaDB,
    shop: Engine,
    watchers: Callable[..., Watcher],
    cache_on: Callable[..., QueryCache],
) -> None:
    namespace = unique_namespace("test-binlog-required")
    cache = cache_on(shop, namespace, require_watcher=True)
    read = reader(shop, "SELECT name FROM dept WHERE id = 1")
    counter = DatabaseReads(shop)
    try:
        read()  # the engine's first connection runs queries of its own
        counter.reset()
        for _ in range(3):
            read()
        assert counter.count == 3  # no watcher yet: nothing from the cache

        watcher = watchers(namespace, *QUICK)
        watcher.wait_for("caught up")
        cached_read(cache, read)

        watcher.kill()

        def served_from_cache() -> bool:
            before = cache.stats()["hits"]
            read()
            return cache.stats()["hits"] > before

        eventually(served_from_cache, False)  # once its heartbeat is gone
        counter.reset()
        hits = cache.stats()["hits"]
        run_sql(binlog_server, "UPDATE dept SET name = 'unwatched' WHERE id = 1")
        for _ in range(5):
            assert read() == [("unwatched",)]
        assert counter.count == 5 and cache.stats()["hits"] == hits

        again = watchers(namespace, *QUICK)
        again.wait_for("caught up")
        assert cached_read(cache, read) == [("unwatched",)]
    finally:
        counter.close()


def test_a_standby_waits_then_takes_over_from_the_saved_position(
    binlog_server: ThrowawayMariaDB,
    shop: Engine,
    watchers: Callable[..., Watcher],
    cache_on: Callable[..., QueryCache],
) -> None:
    namespace = unique_namespace("test-binlog-standby")
    cache = cache_on(shop, namespace)
    read = reader(shop, "SELECT name FROM dept WHERE id = 1")
    first = watchers(namespace, *QUICK)
    first.wait_for("caught up")
    # the standby takes its settings from the environment
    standby = watchers(None, *QUICK, env={"SA_REDIS_CACHE_NAMESPACE": namespace})
    standby.wait_for("standing by")

    cached_read(cache, read)
    run_sql(binlog_server, "UPDATE dept SET name = 'first' WHERE id = 1")
    eventually(read, [("first",)])
    assert "bumped" not in standby.log

    first.kill()
    standby.wait_for("holding the lease")
    standby.wait_for("resuming at")
    cached_read(cache, read)
    run_sql(binlog_server, "UPDATE dept SET name = 'standby' WHERE id = 1")
    eventually(read, [("standby",)])
    assert "invalidating everything" not in standby.log
    # the watchers' lease, position and heartbeat live in the namespace, with a TTL like the rest
    keys = list(cache.client.scan_iter(match="{" + namespace + "}:*"))
    assert {k.decode().split(":")[1] for k in keys} >= {"binlog", "v", "clock", "e"}
    assert all(cache.client.pttl(key) > 0 for key in keys)


def test_the_class_in_a_thread_and_an_unreadable_event(
    binlog_server: ThrowawayMariaDB,
    shop: Engine,
    redis_url: str,
    cache_on: Callable[..., QueryCache],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``BinlogWatcher`` runs in a thread of the app's process too. An event it cannot read is
    never skipped silently: it starts over with everything invalidated."""
    from sa_redis_cache.binlog import BinlogWatcher

    namespace = unique_namespace("test-binlog-class")
    cache = cache_on(shop, namespace)
    read_dept = reader(shop, "SELECT name FROM dept WHERE id = 1")
    read_notes = reader(shop, "SELECT body FROM notes")
    watcher = BinlogWatcher(binlog_server.url, redis_url, namespace=namespace).start()
    try:
        eventually(lambda: watcher.caught_up, True)
        cached_read(cache, read_dept)
        cached_read(cache, read_notes)
        handle = BinlogWatcher._handle

        def choke_on_dept(self: BinlogWatcher, event: Any, stream: Any) -> None:
            if getattr(event, "table", None) == "dept":
                raise ValueError("garbled event")
            handle(self, event, stream)

        monkeypatch.setattr(BinlogWatcher, "_handle", choke_on_dept)
        run_sql(binlog_server, "UPDATE dept SET name = 'garbled' WHERE id = 1")
        eventually(read_dept, [("garbled",)])
        eventually(lambda: watcher.full_invalidations, 2)  # the start, and the unreadable event
        counter = DatabaseReads(shop)
        read_notes()
        counter.close()
        assert counter.count == 1  # everything was invalidated
        assert "an unreadable binlog event (ValueError('garbled event'))" in caplog.text
    finally:
        watcher.stop()
    assert watcher.error is None and not watcher.caught_up


# -- setup errors: one line saying what to change, and a non-zero exit ----------------------------


def watch_once(url: str, *args: str, redis_url: str) -> tuple[int, str]:
    """The command in this process (its startup costs seconds in a subprocess): exit status and
    what it printed."""
    result = CliRunner().invoke(
        cli, ["watch-binlog", "--database-url", url, "--redis-url", redis_url,
              "--namespace", unique_namespace("test-binlog-setup"), *args],
    )  # fmt: skip
    return result.exit_code, result.output


def error_line(result: tuple[int, str]) -> str:
    status, output = result
    assert status != 0, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


def test_binlog_off_is_one_clear_error(redis_url: str) -> None:
    """The shared server runs without a binlog: the watcher (the console script) says how to
    turn it on, and exits with a failure."""
    result = subprocess.run(
        [str(SCRIPT), "watch-binlog", "--database-url", MYSQL_URL, "--redis-url", redis_url,
         "--namespace", unique_namespace("test-binlog-setup")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    line = error_line((result.returncode, result.stderr))
    assert "binary logging is off" in line and "log_bin" in line


def test_statement_format_is_one_clear_error(
    binlog_server: ThrowawayMariaDB, redis_url: str
) -> None:
    run_sql(binlog_server, "SET GLOBAL binlog_format = 'STATEMENT'", db=None)
    try:
        line = error_line(watch_once(binlog_server.url, redis_url=redis_url))
    finally:
        run_sql(binlog_server, "SET GLOBAL binlog_format = 'ROW'", db=None)
    assert "binlog_format is STATEMENT" in line and "binlog_format=ROW" in line


@pytest.mark.parametrize("grants", ["", "REPLICATION CLIENT"])
def test_missing_replication_privileges_are_one_clear_error(
    grants: str, binlog_server: ThrowawayMariaDB, redis_url: str
) -> None:
    user = f"w{uuid.uuid4().hex[:8]}"
    run_sql(binlog_server, f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'", db=None)
    if grants:
        run_sql(binlog_server, f"GRANT {grants} ON *.* TO '{user}'@'%'", db=None)
    try:
        url = make_url(binlog_server.url).set(username=user, password="pw")
        line = error_line(
            watch_once(url.render_as_string(hide_password=False), redis_url=redis_url)
        )
    finally:
        run_sql(binlog_server, f"DROP USER '{user}'@'%'", db=None)
    assert f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{user}'@'%'" in line


def test_the_servers_own_server_id_is_one_clear_error(
    binlog_server: ThrowawayMariaDB, redis_url: str
) -> None:
    line = error_line(watch_once(binlog_server.url, "--server-id", "1", redis_url=redis_url))
    assert "--server-id 1 is the server_id of" in line


def test_a_replica_with_the_same_server_id_is_one_clear_error(
    binlog_server: ThrowawayMariaDB, watchers: Callable[..., Watcher]
) -> None:
    from pymysqlreplication import BinLogStreamReader

    watcher = watchers(unique_namespace("test-binlog-clash"), "--server-id", "4242")
    watcher.wait_for("caught up")
    conn = connect(binlog_server, db=None)
    cursor = conn.cursor()
    cursor.execute("SELECT @@gtid_binlog_pos")
    (position,) = cursor.fetchone()
    conn.close()
    replica = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": binlog_server.port, "user": "root"},
        server_id=4242, blocking=False, is_mariadb=True, auto_position=position,
        enable_logging=False,
    )  # fmt: skip
    try:
        replica.fetchone()  # connects: the server drops the older connection with this id
        status = watcher.process.wait(30)
    finally:
        replica.close()
    assert status != 0
    assert "Error: another replica" in watcher.log and "--server-id nobody else uses" in watcher.log


def test_the_walkthrough_shows_an_outside_write(binlog_server: ThrowawayMariaDB) -> None:
    """``make demo-binlog``: the mysql command line writes behind the apps' back; once the
    watcher has passed it on, the cached API serves the new name."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["DATABASE_URL"] = (
        make_url(binlog_server.url)
        .set(drivername="mysql+pymysql", database="walkthrough_binlog")
        .render_as_string(hide_password=False)
    )
    result = subprocess.run(
        [sys.executable, "-m", "example_app.walkthrough", "--binlog"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "HIT" in out.split("8. the binlog watcher")[1].split("\n")[1]
    assert "the mysql command line" in out.split("9. an outside write")[1].split("\n")[0]
    after = out.split("10. the cached API sees it")[1]
    assert "miss" in after.split("\n")[1] and "Grace Hopper" in after


# -- packaging --------------------------------------------------------------------------------


def test_the_core_imports_neither_click_nor_mysql_replication() -> None:
    code = (
        "import sys, sa_redis_cache, sa_redis_cache.testing; "
        "print(sorted(m for m in ('click', 'pymysqlreplication') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize(
    ("blocked", "message"),
    [
        ("pymysqlreplication", "pip install 'sa_redis_cache[binlog]'"),
        ("click", "pip install 'sa_redis_cache[cli]'"),
    ],
)
def test_a_missing_extra_is_one_clear_line(blocked: str, message: str) -> None:
    code = (
        f"import sys; sys.modules[{blocked!r}] = None; "
        "sys.argv = ['sa-redis-cache', 'watch-binlog', '--database-url', 'mysql://h/']; "
        "from sa_redis_cache.cli import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_the_binlog_benchmark_smoke_run_writes_its_section(
    binlog_server: ThrowawayMariaDB, redis_url: str, tmp_path: Path
) -> None:
    """``python -m bench.binlog`` on tiny numbers: it runs and writes its section."""
    from bench import binlog as bench_binlog

    (tmp_path / "benchmarks.md").write_text("# Benchmarks\n\nthe main run's report\n")
    assert bench_binlog.main([
        "--database-url", binlog_server.url, "--redis-url", redis_url, "--samples", "4",
        "--seconds", "1", "--readers", "1", "--output", str(tmp_path),
    ]) == 0  # fmt: skip
    report = (tmp_path / "benchmarks.md").read_text()
    assert report.startswith("# Benchmarks\n\nthe main run's report\n")
    assert "## The binlog watcher" in report and "| no watcher |" in report
