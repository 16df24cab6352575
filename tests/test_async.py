"""AsyncSession and redis.asyncio: what only an async application can do to the cache.

The shared guarantees (hits, writes, transactions, snapshots, faults...) are proven by the rest of
the suite, whose tests also run in the async flavors (see conftest.py). Here: AsyncSession's own
API, the event loop never blocked by Redis, and cancellation at each point of a request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from sqlalchemy import Engine, select, update
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import joinedload, selectinload

from sa_redis_cache import QueryCache, record
from tests.conftest import DatabaseReads, RedisServer, seed, sqlite_engine_at, unique_namespace
from tests.models import Base, Department, Employee, Project

DRIVERS = ["mariadb-asyncmy", "mariadb-aiomysql", "sqlite-aiosqlite"]


@pytest.fixture(params=DRIVERS)
def async_engine(
    request: pytest.FixtureRequest, aio_loop: asyncio.AbstractEventLoop, tmp_path: Any
) -> Iterator[AsyncEngine]:
    """A seeded database behind an AsyncEngine of each async driver."""
    database, _, driver = request.param.partition("-")
    if database == "mariadb":
        plain: Engine = request.getfixturevalue("mariadb")
        url = plain.url.set(drivername=f"mysql+{driver}")
    else:
        plain = sqlite_engine_at(tmp_path / "async.db")
        Base.metadata.create_all(plain)
        url = plain.url.set(drivername=f"sqlite+{driver}")
    seed(plain)
    engine = create_async_engine(url)

    async def connect_once() -> None:  # the dialect's first-connect queries are not the test's
        async with engine.connect():
            pass

    aio_loop.run_until_complete(connect_once())
    yield engine
    aio_loop.run_until_complete(engine.dispose())


@pytest.fixture
def async_cache(aio_loop: asyncio.AbstractEventLoop, redis_url: str) -> Iterator[QueryCache]:
    cache = QueryCache.from_url(redis_url, asyncio=True, namespace=unique_namespace("async"))
    yield cache
    for engine in cache.engines:
        cache.uninstall(engine)
    aio_loop.run_until_complete(cache.aclear())
    aio_loop.run_until_complete(cache.client.aclose())  # type: ignore[union-attr]


def run(loop: asyncio.AbstractEventLoop, coroutine: Awaitable[Any]) -> Any:
    return loop.run_until_complete(coroutine)


def caching(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """What the README tells async users to write."""
    return async_sessionmaker(engine, execution_options={"redis_cache": True})


async def every_kind_of_read(sessions: async_sessionmaker[AsyncSession]) -> list[Any]:
    """execute, scalars, get, relationship loads (selectin, joined, awaitable_attrs)."""
    async with sessions() as session:
        rows = (await session.execute(select(Employee.name).order_by(Employee.id))).all()
        departments = (await session.scalars(select(Department).order_by(Department.id))).all()
        ann = await session.get(Employee, 1)
        assert ann is not None
        projects = await ann.awaitable_attrs.projects
        with_employees = (
            await session.scalars(
                select(Department)
                .options(selectinload(Department.employees))
                .order_by(Department.id)
            )
        ).all()
        with_department = (
            await session.scalars(
                select(Employee).options(joinedload(Employee.department)).order_by(Employee.id)
            )
        ).all()
        return [
            [tuple(row) for row in rows],
            [d.name for d in departments],
            (ann.name, ann.salary, ann.hired_at),
            [p.title for p in projects],
            [(d.name, sorted(e.name for e in d.employees)) for d in with_employees],
            [(e.name, e.department.name) for e in with_department],
        ]


def test_async_session_reads_are_served_from_the_cache(
    async_engine: AsyncEngine, async_cache: QueryCache, aio_loop: asyncio.AbstractEventLoop
) -> None:
    async_cache.install(async_engine)
    sessions = caching(async_engine)
    first = run(aio_loop, every_kind_of_read(sessions))
    reads = DatabaseReads(async_engine.sync_engine)
    with record() as counts:
        assert run(aio_loop, every_kind_of_read(sessions)) == first
    reads.close()
    assert reads.count == 0, reads.statements
    assert counts.hits >= 7 and counts.misses == 0


def test_stream_and_opt_outs_always_reach_the_database(
    async_engine: AsyncEngine, async_cache: QueryCache, aio_loop: asyncio.AbstractEventLoop
) -> None:
    async_cache.install(async_engine)
    sessions = caching(async_engine)
    statement = select(Employee.name).order_by(Employee.id)

    async def stream_and_opt_out() -> list[Any]:
        async with sessions() as session:
            streamed = [name async for name in await session.stream_scalars(statement)]
            opted_out = (
                await session.scalars(statement.execution_options(redis_cache=False))
            ).all()
            return [streamed, opted_out]

    reads = DatabaseReads(async_engine.sync_engine)
    for _ in range(2):
        assert run(aio_loop, stream_and_opt_out()) == [["ann", "bob", "cid"]] * 2
    reads.close()
    assert reads.count == 4
    assert async_cache.stats()["hits"] == 0


def test_commit_bumps_before_await_commit_returns(
    async_engine: AsyncEngine,
    async_cache: QueryCache,
    aio_loop: asyncio.AbstractEventLoop,
    redis_url: str,
) -> None:
    """Once ``await session.commit()`` has returned, another process (here: a sync cache on a
    sync engine, the other half of a mixed deployment) reads the write; a savepoint rolled back
    publishes nothing."""
    async_cache.install(async_engine)
    sessions = caching(async_engine)
    sync_engine = sync_twin(async_engine)
    other = QueryCache.from_url(redis_url, namespace=async_cache.namespace)
    other.install(sync_engine)
    try:

        def names_elsewhere() -> list[str]:
            from sqlalchemy.orm import Session

            with Session(sync_engine, execution_options={"redis_cache": True}) as session:
                return list(session.scalars(select(Employee.name).order_by(Employee.id)))

        assert names_elsewhere() == names_elsewhere() == ["ann", "bob", "cid"]
        assert other.stats()["hits"] == 1

        async def write() -> None:
            async with sessions() as session:
                async with session.begin_nested() as savepoint:
                    await session.execute(update(Project).values(title="never"))
                    await savepoint.rollback()
                employee = await session.get(Employee, 2)
                assert employee is not None
                employee.name = "async"
                await session.commit()

        async def titles() -> list[str]:
            async with sessions() as session:
                return list(await session.scalars(select(Project.title)))

        assert run(aio_loop, titles()) == ["apollo"]
        run(aio_loop, write())
        assert names_elsewhere() == ["ann", "async", "cid"]
        hits = async_cache.stats()["hits"]
        assert run(aio_loop, titles()) == ["apollo"]
        assert async_cache.stats()["hits"] == hits + 1  # the rolled-back savepoint's table
    finally:
        other.uninstall(sync_engine)
        other.clear()
        sync_engine.dispose()


def sync_twin(async_engine: AsyncEngine) -> Engine:
    from sqlalchemy import create_engine

    url = async_engine.url
    driver = "mysqldb" if url.get_backend_name() == "mysql" else "pysqlite"
    return create_engine(url.set(drivername=f"{url.get_backend_name()}+{driver}"))


def test_ainvalidate_and_aclear(
    async_engine: AsyncEngine, async_cache: QueryCache, aio_loop: asyncio.AbstractEventLoop
) -> None:
    async_cache.install(async_engine)
    sessions = caching(async_engine)

    async def count_reads() -> int:
        reads = DatabaseReads(async_engine.sync_engine)
        async with sessions() as session:
            await session.scalars(select(Project))
        reads.close()
        return reads.count

    assert run(aio_loop, count_reads()) == 1
    assert run(aio_loop, count_reads()) == 0
    run(aio_loop, async_cache.ainvalidate("project"))
    assert run(aio_loop, count_reads()) == 1
    assert run(aio_loop, async_cache.aclear()) >= 2
    assert run(aio_loop, count_reads()) == 1


def test_record_counts_each_task_on_its_own(
    async_engine: AsyncEngine, async_cache: QueryCache, aio_loop: asyncio.AbstractEventLoop
) -> None:
    async_cache.install(async_engine)
    sessions = caching(async_engine)

    async def request(statement: Any) -> dict[str, int]:
        with record() as counts:
            async with sessions() as session:
                (await session.execute(statement)).all()
        return dict(counts)

    async def both() -> list[dict[str, int]]:
        await request(select(Project))  # warm one of them
        return await asyncio.gather(request(select(Project)), request(select(Department.id)))

    hit, miss = run(aio_loop, both())
    assert (hit["hits"], hit["misses"]) == (1, 0)
    assert (miss["hits"], miss["misses"]) == (0, 1)


# -- the event loop, and cancellation, against a Redis of the test's own ----------------------


class Watched:
    """A redis.asyncio client whose sends a test can watch, and act on, as they happen."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.on_send: Callable[[str], None] = lambda command: None

    def client(self, url: str) -> redis.asyncio.Redis:
        watched = self

        class Connection(redis.asyncio.Connection):
            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                name = bytes(command if isinstance(command, bytes) else b"".join(command))
                name_text = name.split(b"\r\n")[2].decode()
                watched.sent.append(name_text)
                watched.on_send(name_text)
                await super().send_packed_command(command, check_health)

        return redis.asyncio.Redis.from_url(
            url, connection_class=Connection, socket_timeout=10, retry=None
        )


@pytest.fixture
def watched(
    async_engine: AsyncEngine,
    redis_server: RedisServer,
    aio_loop: asyncio.AbstractEventLoop,
) -> Iterator[tuple[QueryCache, Watched]]:
    watch = Watched()
    cache = QueryCache(watch.client(redis_server.url), namespace="watched", write_lease=30)
    cache.install(async_engine)
    yield cache, watch
    cache.uninstall(async_engine)
    aio_loop.run_until_complete(cache.client.aclose())  # type: ignore[union-attr]


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``condition`` holds (a bounded wait, not a timing assertion)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


async def names(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        return list(await session.scalars(select(Employee.name).order_by(Employee.id)))


def test_a_slow_redis_never_blocks_the_event_loop(
    async_engine: AsyncEngine,
    watched: tuple[QueryCache, Watched],
    redis_server: RedisServer,
    aio_loop: asyncio.AbstractEventLoop,
) -> None:
    """Redis stops answering while a request waits for its lookup: a ticker task on the same
    loop keeps ticking, and the request completes once Redis answers again."""
    _, watch = watched
    sessions = caching(async_engine)

    async def scenario() -> None:
        assert await names(sessions) == ["ann", "bob", "cid"]  # stored
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticking = asyncio.create_task(ticker())
        redis_server.freeze()
        watch.sent.clear()
        request = asyncio.create_task(names(sessions))
        await until(lambda: "EVALSHA" in watch.sent, "the lookup was sent")
        before = ticks
        await until(lambda: ticks >= before + 20, "the ticker ticked while Redis was frozen")
        assert not request.done()  # still waiting for Redis, and the loop ran meanwhile
        redis_server.thaw()
        assert await request == ["ann", "bob", "cid"]
        ticking.cancel()

    with record() as counts:
        run(aio_loop, scenario())
    assert counts.hits == 1 and counts.errors == 0


def cancel_when(
    watch: Watched, redis_server: RedisServer, nth_script: int
) -> Callable[[asyncio.Task[Any]], Awaitable[None]]:
    """Freeze Redis just before the ``nth_script`` EVALSHA is sent, then cancel the task once
    it has been sent (its reply is what the task waits for)."""
    counter = {"scripts": 0}

    def on_send(command: str) -> None:
        if command == "EVALSHA":
            counter["scripts"] += 1
            if counter["scripts"] == nth_script:
                redis_server.freeze()

    watch.on_send = on_send

    async def cancel(task: asyncio.Task[Any]) -> None:
        await until(lambda: counter["scripts"] >= nth_script, "the script was sent")
        await asyncio.sleep(0.01)  # let the task reach its read of the reply
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        watch.on_send = lambda command: None
        redis_server.thaw()

    return cancel


@pytest.mark.parametrize("point", ["lookup", "store"])
def test_a_request_cancelled_mid_read_leaves_nothing_behind(
    point: str,
    async_engine: AsyncEngine,
    watched: tuple[QueryCache, Watched],
    redis_server: RedisServer,
    aio_loop: asyncio.AbstractEventLoop,
) -> None:
    """Cancelled while waiting for the lookup's reply (the first script of a miss) or the
    store's (the second): the pooled Redis connection carries no half-read reply, the next
    requests are served right, and a write afterwards is seen."""
    cache, watch = watched
    sessions = caching(async_engine)

    async def scenario() -> None:
        cancel = cancel_when(watch, redis_server, 1 if point == "lookup" else 2)
        await cancel(asyncio.create_task(names(sessions)))
        for _ in range(3):
            assert await names(sessions) == ["ann", "bob", "cid"]
        async with sessions() as session:
            await session.execute(update(Employee).where(Employee.id == 1).values(name="new"))
            await session.commit()
        assert await names(sessions) == ["new", "bob", "cid"]

    run(aio_loop, scenario())
    assert cache.stats()["hits"] >= 1


def test_a_commit_cancelled_after_the_database_commit_still_bumps(
    async_engine: AsyncEngine,
    watched: tuple[QueryCache, Watched],
    redis_server: RedisServer,
    aio_loop: asyncio.AbstractEventLoop,
    redis_url: str,
) -> None:
    """The commit's task is cancelled while its second bump (after the database commit) waits
    for Redis: the bump still completes, so the writer mark goes at once (not after the
    30 s lease) and every reader sees the write."""
    cache, watch = watched
    sessions = caching(async_engine)
    inspector = redis.Redis(port=redis_server.port)

    def marks() -> int:
        return sum(inspector.zcard(key) for key in inspector.scan_iter(match="{watched}:w:*"))

    async def scenario() -> None:
        assert await names(sessions) == await names(sessions)  # cached
        await cache.ainvalidate("project")  # the bump script is loaded: one EVALSHA per bump

        async def commit() -> None:
            async with sessions() as session:
                await session.execute(update(Employee).where(Employee.id == 1).values(name="c"))
                await session.commit()

        watch.sent.clear()
        cancel = cancel_when(watch, redis_server, 2)  # announce, then the bump after the commit
        await cancel(asyncio.create_task(commit()))
        await until(lambda: marks() == 0, "the shielded bump removed the writer mark")
        assert await names(sessions) == ["c", "bob", "cid"]
        assert await names(sessions) == ["c", "bob", "cid"]

    run(aio_loop, scenario())
    assert cache.stats()["hits"] >= 2


def test_a_request_under_asyncio_timeout_gets_its_timeout(
    async_engine: AsyncEngine,
    watched: tuple[QueryCache, Watched],
    redis_server: RedisServer,
    aio_loop: asyncio.AbstractEventLoop,
) -> None:
    """``asyncio.timeout`` around a request whose lookup waits on a frozen Redis: the application
    sees its own TimeoutError (never an error of the cache's), and the next request is right."""
    cache, _ = watched
    sessions = caching(async_engine)

    async def scenario() -> None:
        redis_server.freeze()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await names(sessions)
        redis_server.thaw()
        assert await names(sessions) == ["ann", "bob", "cid"]
        assert await names(sessions) == ["ann", "bob", "cid"]

    run(aio_loop, scenario())
    assert cache.stats()["errors"] == 0


def test_a_commit_cancelled_while_its_bump_waits_for_redis_still_bumps(
    async_engine: AsyncEngine,
    redis_server: RedisServer,
    aio_loop: asyncio.AbstractEventLoop,
) -> None:
    """The bump after the database commit waits for a connection (the pool's only one is busy)
    when the commit's task is cancelled: nothing has been sent yet, and the bump must still
    happen once a connection is free, or the writer mark would outlive the commit by the lease
    and the REPEATABLE READ window stay open."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        redis_server.url, max_connections=1, timeout=None, socket_timeout=10
    )
    cache = QueryCache(redis.asyncio.Redis(connection_pool=pool), namespace="pool", retry_after=1)
    cache.install(async_engine)
    sessions = caching(async_engine)
    inspector = redis.Redis(port=redis_server.port)
    held: list[Any] = []

    def marks() -> int:
        return sum(inspector.zcard(key) for key in inspector.scan_iter(match="{pool}:w:*"))

    async def hold_the_connection() -> None:
        held.append(await pool.get_connection())  # type: ignore[no-untyped-call]

    async def scenario() -> None:
        assert await names(sessions) == await names(sessions)  # cached
        await cache.ainvalidate("project")  # the bump script is loaded
        original_announce = cache._engines[async_engine.sync_engine].invalidator.announce

        def announce_then_take_the_connection(tables: Any) -> Any:
            token = original_announce(tables)
            asyncio.get_running_loop().create_task(hold_the_connection())  # first in line
            return token

        cache._engines[async_engine.sync_engine].invalidator.announce = (  # type: ignore[method-assign]
            announce_then_take_the_connection
        )

        async def commit() -> None:
            async with sessions() as session:
                await session.execute(update(Employee).where(Employee.id == 1).values(name="c"))
                await session.commit()

        committing = asyncio.create_task(commit())
        await until(lambda: bool(held), "the test holds the only connection")
        await asyncio.sleep(0.05)  # the commit reaches its bump, which waits for the connection
        committing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await committing
        assert marks() > 0  # announced (the table and its cascades), not finished
        await pool.release(held.pop())
        await until(lambda: marks() == 0, "the cancelled commit's bump removed the writer mark")
        assert await names(sessions) == ["c", "bob", "cid"]

    try:
        run(aio_loop, scenario())
    finally:
        cache.uninstall(async_engine)
        aio_loop.run_until_complete(pool.disconnect())


def test_the_pytest_plugin_has_an_async_cache_fixture(
    async_engine: AsyncEngine,
    async_query_cache: QueryCache,
    aio_loop: asyncio.AbstractEventLoop,
) -> None:
    """What the README offers async applications' own tests: ``async_query_cache``."""
    assert async_query_cache.is_async
    async_query_cache.install(async_engine)
    sessions = caching(async_engine)
    run(aio_loop, names(sessions))
    assert run(aio_loop, names(sessions)) == ["ann", "bob", "cid"]
    assert async_query_cache.stats()["hits"] == 1
