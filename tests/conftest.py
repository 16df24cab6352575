"""Fixtures: the real MariaDB and Redis (failing, never skipping, under CI), SQLite where the
behaviour does not depend on the database, and a counter of statements that reached the database."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from sa_redis_cache import CachingQuery, QueryCache
from sa_redis_cache.testing import service_missing
from tests.models import Badge, Base, Department, Employee, Level, Manager, Project

MYSQL_URL = os.environ.get("SA_REDIS_CACHE_TEST_MYSQL_URL", "mysql+mysqldb://root@127.0.0.1:3306/")
RUN_ID = os.environ.get("SA_REDIS_CACHE_TEST_ID") or os.environ.get("PYTEST_XDIST_WORKER", "main")
"""Names this run's databases, so that runs from two checkouts on one server keep apart."""


def unique_namespace(prefix: str = "test") -> str:
    """A namespace no other test (or concurrent run) shares."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def fresh_database(suffix: str) -> Iterator[URL]:
    """A database of our own on the shared MariaDB, created afresh, dropped afterwards."""
    name = f"sa_redis_cache_test_{RUN_ID}{suffix}"
    admin = create_engine(MYSQL_URL)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    except OperationalError as exc:
        service_missing(f"MariaDB at {MYSQL_URL}", exc)
    yield make_url(MYSQL_URL).set(database=name)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    admin.dispose()


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[URL]:
    yield from fresh_database("")


@pytest.fixture
def demo_mysql_url() -> Iterator[URL]:
    """For the demo app, whose migrations create and drop tables of the same names."""
    yield from fresh_database("_demo")


@pytest.fixture(scope="session")
def mysql_engine(mysql_url: URL) -> Iterator[Engine]:
    engine = create_engine(mysql_url)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _empty_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


def sqlite_engine_at(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _foreign_keys(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    return engine


@pytest.fixture(params=["mariadb", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The database under test: MariaDB, and SQLite for behaviour that does not depend on it."""
    if request.param == "mariadb":
        mysql: Engine = request.getfixturevalue("mysql_engine")
        _empty_tables(mysql)
        yield mysql
        return
    sqlite = sqlite_engine_at(tmp_path / "test.db")
    Base.metadata.create_all(sqlite)
    yield sqlite
    sqlite.dispose()


@pytest.fixture
def mariadb(mysql_engine: Engine) -> Engine:
    """MariaDB only: for behaviour that depends on it (isolation levels, cascades, DDL)."""
    _empty_tables(mysql_engine)
    return mysql_engine


def caching_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """What the README tells users to write."""
    return sessionmaker(engine, query_cls=CachingQuery, execution_options={"redis_cache": True})


@pytest.fixture
def cached(engine: Engine, query_cache: QueryCache) -> sessionmaker[Session]:
    query_cache.install(engine)
    return caching_sessionmaker(engine)


class DatabaseReads:
    """Counts SELECTs that reached the database: cache hits never do."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []
        event.listen(engine, "do_execute", self._execute)
        event.listen(engine, "do_execute_no_params", self._execute_no_params)

    def _execute(self, cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        if statement.lstrip().upper().startswith(("SELECT", "WITH", "(")):
            self.statements.append(statement)
        return False

    def _execute_no_params(self, cursor: Any, statement: str, context: Any) -> bool:
        return self._execute(cursor, statement, (), context)

    @property
    def count(self) -> int:
        return len(self.statements)

    def reset(self) -> None:
        self.statements.clear()

    def close(self) -> None:
        event.remove(self.engine, "do_execute", self._execute)
        event.remove(self.engine, "do_execute_no_params", self._execute_no_params)


@contextmanager
def cache_with(
    engine: Engine, redis_url: str, **options: Any
) -> Iterator[tuple[QueryCache, DatabaseReads]]:
    """A cache with options of its own on a fresh namespace, and a counter of database reads."""
    cache = QueryCache.from_url(redis_url, namespace=unique_namespace(), **options)
    cache.install(engine)
    reads = DatabaseReads(engine)
    try:
        yield cache, reads
    finally:
        reads.close()
        cache.uninstall(engine)
        cache.clear()


@pytest.fixture
def db_reads(engine: Engine, cached: sessionmaker[Session]) -> Iterator[DatabaseReads]:
    counter = DatabaseReads(engine)
    yield counter
    counter.close()


HIRED = datetime.datetime(2021, 3, 4, 5, 6, 7, 890000)


def seed(engine: Engine) -> None:
    """Two departments, three employees with every value type, projects, badges, a manager."""
    with Session(engine) as session:
        sales = Department(id=1, name="sales")
        ops = Department(id=2, name="ops")
        apollo = Project(id=1, title="apollo")
        ann = Employee(
            id=1,
            name="ann",
            department=sales,
            salary=Decimal("1234.50"),
            hired_at=HIRED,
            birthday=datetime.date(1990, 1, 2),
            photo=b"\x00\xffbytes",
            level=Level.senior,
            extra={"k": [1, 2, {"n": None}]},
            projects=[apollo],
            badges=[Badge(id=1, label="gold")],
        )
        bob = Employee(id=2, name="bob", department=sales, projects=[apollo])
        cid = Employee(id=3, name="cid", department=ops, level=Level.junior)
        session.add_all([sales, ops, ann, bob, cid, Manager(id=1, name="meg", budget=10)])
        session.commit()


@pytest.fixture
def seeded(engine: Engine) -> None:
    seed(engine)


@pytest.fixture
def seeded_mariadb(mariadb: Engine) -> Engine:
    seed(mariadb)
    return mariadb


class RedisServer:
    """A redis-server of the test's own on a free loopback port: to kill, freeze or restart."""

    def __init__(self, directory: Path, *extra: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._directory), *self._extra],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)  # waiting for start-up, not asserting timing

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        service_missing("redis-server (to start a throwaway Redis)", FileNotFoundError())
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.thaw()
    server.kill()
