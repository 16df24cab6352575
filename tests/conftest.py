"""Fixtures: the real MariaDB and Redis (failing, never skipping, under CI), SQLite where the
behaviour does not depend on the database, and a counter of statements that reached the database."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pytest
import redis
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util import await_, greenlet_spawn

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
        # a connection a test leaked (an async one cannot be returned by the garbage collector)
        # would hold its metadata locks and make DROP DATABASE wait forever
        for (leaked,) in conn.exec_driver_sql(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID != CONNECTION_ID()",
            (name,),
        ):
            conn.exec_driver_sql(f"KILL {int(leaked)}")
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
    event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


def _sqlite_foreign_keys(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# -- flavors: every test of `engine` (or `mariadb`) runs on these database + driver pairs ---------
#
# An async flavor's engine is the ``sync_engine`` of an ``AsyncEngine`` on an asyncio driver with a
# cache on a ``redis.asyncio`` client, and the test function runs inside SQLAlchemy's greenlet on
# an event loop, exactly as an ``AsyncSession`` runs its work: the same test body, written
# against the sync Session API, exercises the async drivers, the asyncio store and the hooks
# awaiting from the greenlet. (AsyncSession's own API is tested in test_async.py.)

SYNC_FLAVORS: Final = ("mariadb", "sqlite")
ASYNC_FLAVORS: Final = ("mariadb-asyncmy", "mariadb-aiomysql", "sqlite-aiosqlite")
DEFAULT_FLAVORS: Final = ("mariadb", "sqlite", "mariadb-asyncmy", "sqlite-aiosqlite")
"""aiomysql joins where a module asks for ``pytest.mark.flavors(*ALL_FLAVORS)``."""
ALL_FLAVORS: Final = SYNC_FLAVORS + ASYNC_FLAVORS
_TWINS: dict[Engine, Engine] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "flavors(*names): the database + driver flavors the test runs on"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    explicit = {
        name
        for mark in metafunc.definition.iter_markers("parametrize")
        for name in ([mark.args[0]] if isinstance(mark.args[0], str) else mark.args[0])
    }
    marker = metafunc.definition.get_closest_marker("flavors")
    flavors = marker.args if marker else DEFAULT_FLAVORS
    for fixture, databases in (("engine", ("mariadb", "sqlite")), ("mariadb", ("mariadb",))):
        if fixture in metafunc.fixturenames and not any(fixture in n for n in explicit):
            chosen = [f for f in flavors if f.split("-")[0] in databases]
            metafunc.parametrize(fixture, chosen, indirect=True)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """An async flavor's test body runs in a greenlet on the session's event loop."""
    loop = getattr(pyfuncitem, "sa_redis_cache_loop", None)
    if loop is None:
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    loop.run_until_complete(greenlet_spawn(pyfuncitem.obj, **arguments))
    return True


_LOOP: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(scope="session")
def aio_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One loop for the whole run: async drivers' and redis.asyncio's pools are bound to it."""
    loop = asyncio.new_event_loop()
    _LOOP.append(loop)
    yield loop
    _LOOP.clear()
    loop.close()


def in_flavor(engine: Engine, work: Callable[[], Any]) -> Any:
    """Run ``work`` as the test body would run it for ``engine`` (for fixtures doing I/O)."""
    if not is_async(engine):
        return work()
    return _LOOP[0].run_until_complete(greenlet_spawn(work))


def flavor_of(request: pytest.FixtureRequest) -> str:
    """The flavor the current test runs in ("mariadb" for tests of neither fixture)."""
    params = getattr(request.node, "callspec", None)
    found = params.params if params is not None else {}
    return str(found.get("engine") or found.get("mariadb") or "mariadb")


def is_async(engine: Engine) -> bool:
    return engine in _TWINS


def raw_client(cache: QueryCache) -> redis.Redis:
    """A plain sync client on the cache's Redis, for tests that look at keys themselves."""
    if not cache.is_async:
        return cache.client  # type: ignore[return-value]
    settings = cache.client.connection_pool.connection_kwargs
    return redis.Redis(
        host=settings.get("host", "127.0.0.1"),
        port=settings.get("port", 6379),
        db=settings.get("db", 0),
        socket_timeout=5,
    )


def plain(engine: Engine) -> Engine:
    """A synchronous engine on the same database (for fixtures, which run outside the loop)."""
    return _TWINS.get(engine, engine)


def _flavored(request: pytest.FixtureRequest, flavor: str, tmp_path: Path) -> Iterator[Engine]:
    database, _, driver = flavor.partition("-")
    if database == "mariadb":
        twin: Engine = request.getfixturevalue("mysql_engine")
        _empty_tables(twin)
        url = twin.url.set(drivername=f"mysql+{driver}")
    else:
        twin = sqlite_engine_at(tmp_path / "test.db")
        Base.metadata.create_all(twin)
        url = twin.url.set(drivername=f"sqlite+{driver}")
    if not driver:
        yield twin
        if database == "sqlite":
            twin.dispose()
        return
    loop: asyncio.AbstractEventLoop = request.getfixturevalue("aio_loop")
    async_engine = create_async_engine(url)
    if database == "sqlite":
        event.listen(async_engine.sync_engine, "connect", _sqlite_foreign_keys)
    _TWINS[async_engine.sync_engine] = twin
    # connect once: the dialect's first-connect queries are not the test's
    loop.run_until_complete(greenlet_spawn(lambda: async_engine.sync_engine.connect().close()))
    request.node.sa_redis_cache_loop = loop  # type: ignore[attr-defined]
    yield async_engine.sync_engine
    del _TWINS[async_engine.sync_engine]
    loop.run_until_complete(async_engine.dispose())
    if database == "sqlite":
        twin.dispose()


@pytest.fixture
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The database under test: MariaDB, and SQLite for behaviour that does not depend on it,
    each through a sync and an async driver (see the flavors above)."""
    yield from _flavored(request, request.param, tmp_path)


@pytest.fixture
def mariadb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """MariaDB only: for behaviour that depends on it (isolation levels, cascades, DDL)."""
    yield from _flavored(request, getattr(request, "param", "mariadb"), tmp_path)


def engine_like(engine: Engine, url: URL | None = None, **options: Any) -> Engine:
    """Another engine of ``engine``'s flavor (sync or async), on ``url`` or the same database.
    Dispose it with :func:`dispose`."""
    if not is_async(engine):
        return create_engine(url or engine.url, **options)
    async_url = engine.url if url is None else url.set(drivername=engine.url.drivername)
    other = create_async_engine(async_url, **options).sync_engine
    _TWINS[other] = create_engine(plain(engine).url if url is None else url)
    return other


def dispose(engine: Engine) -> None:
    """Dispose an engine made by :func:`engine_like` (inside a test body)."""
    twin = _TWINS.pop(engine, None)
    if twin is None:
        engine.dispose()
        return
    twin.dispose()
    await_(AsyncEngine(engine).dispose())


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


def _sync_query_cache(redis_url: str) -> Iterator[QueryCache]:
    cache = QueryCache.from_url(redis_url, namespace=unique_namespace())
    try:
        yield cache
    finally:
        for engine in cache.engines:
            cache.uninstall(engine)
        cache.clear()


@pytest.fixture
def query_cache(request: pytest.FixtureRequest, redis_url: str) -> Iterator[QueryCache]:
    """The plugin's fixture, on a ``redis.asyncio`` client in the async flavors."""
    if flavor_of(request) in SYNC_FLAVORS:
        yield from _sync_query_cache(redis_url)
        return
    loop: asyncio.AbstractEventLoop = request.getfixturevalue("aio_loop")
    cache = QueryCache.from_url(redis_url, asyncio=True, namespace=unique_namespace())
    try:
        yield cache
    finally:
        for engine in cache.engines:
            cache.uninstall(engine)
        loop.run_until_complete(cache.aclear())
        loop.run_until_complete(cache.client.aclose())  # type: ignore[union-attr]


@contextmanager
def cache_with(
    engine: Engine, redis_url: str, **options: Any
) -> Iterator[tuple[QueryCache, DatabaseReads]]:
    """A cache with options of its own on a fresh namespace, and a counter of database reads."""
    cache = QueryCache.from_url(
        redis_url, asyncio=is_async(engine), namespace=unique_namespace(), **options
    )
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
    seed(plain(engine))


@pytest.fixture
def seeded_mariadb(mariadb: Engine) -> Engine:
    seed(plain(mariadb))
    return mariadb


@pytest.fixture(scope="session")
def redis_inspector(redis_url: str) -> redis.Redis:
    """A plain client for tests that look at the keys themselves (in every flavor)."""
    return redis.Redis.from_url(redis_url, socket_timeout=5)


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
