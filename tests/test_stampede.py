"""Stampede protection: when many processes miss the same entry at once, one computes it and the
others wait (boundedly) for its result instead of all hitting the database."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, event, select
from sqlalchemy.engine import URL

from sa_redis_cache import QueryCache
from sa_redis_cache.round_trips import NO_REPLY, RedisCommandLog
from tests import processes
from tests.conftest import caching_sessionmaker, is_async, raw_client, unique_namespace
from tests.models import Employee


@pytest.mark.usefixtures("seeded_mariadb")
def test_twenty_concurrent_identical_misses_reach_the_database_once(
    mariadb: Engine, mysql_url: URL, redis_url: str, query_cache: QueryCache
) -> None:
    url = mysql_url.render_as_string(hide_password=False)
    results = processes.run_together(
        processes.read_together, 20, url, redis_url, query_cache.namespace
    )
    assert all(names == ["ann", "bob", "cid"] for _, names in results)
    assert sum(reached for reached, _ in results) == 1


WAIT = 0.2
"""stampede_wait in the tests below."""
MARGIN = 5.0
"""Seconds a busy machine may add to a bounded wait: an upper bound only, never a speed test."""


def take_the_lock_and_die(cache: QueryCache, engine: Engine, statement: Any) -> bytes:
    """A lock holder that dies before its query returns; returns the lock key it leaves."""

    def holder_dies(cursor: Any, sql: str, parameters: Any, context: Any) -> bool:
        raise RuntimeError("the lock holder died before its query returned")

    event.listen(engine, "do_execute", holder_dies)  # runs after the lookup took the lock
    try:
        with pytest.raises(RuntimeError), caching_sessionmaker(engine)() as session:
            session.execute(statement).all()
    finally:
        event.remove(engine, "do_execute", holder_dies)
    [lock] = raw_client(cache).keys("{" + cache.namespace + "}:l:*")
    return bytes(lock)


@pytest.mark.parametrize("holder", ["dead, its lock expiring", "slow, its lock outliving the wait"])
@pytest.mark.usefixtures("seeded")
def test_waiting_is_bounded_then_the_database_answers(
    holder: str, engine: Engine, redis_url: str
) -> None:
    """Another process holds the lock and stores nothing: a reader waits no longer than
    stampede_wait, then the database answers. The lock of a dead holder expires after
    stampede_wait; a slow holder's (a process configured with a longer stampede_wait) outlives
    the wait, so only the waiter's own deadline ends it."""
    cache = QueryCache.from_url(
        redis_url,
        asyncio=is_async(engine),
        namespace=unique_namespace("test-stampede-bound"),
        stampede_wait=WAIT,
    )
    cache.install(engine)
    cached = caching_sessionmaker(engine)
    statement = select(Employee.name).order_by(Employee.id)
    try:
        lock = take_the_lock_and_die(cache, engine, statement)
        if holder.startswith("slow"):
            assert raw_client(cache).pexpire(lock, 15_000)

        before = cache.stats()
        started = time.monotonic()
        with cached() as session:
            assert list(session.scalars(statement)) == ["ann", "bob", "cid"]
        waited = time.monotonic() - started
        after = cache.stats()
        assert waited < WAIT + MARGIN, f"waited {waited:.1f}s for a lock it never got"
        # it took over the expired lock (a miss) or gave up waiting (a bypass)
        waited_out = (after["misses"] - before["misses"]) + (after["bypasses"] - before["bypasses"])
        assert waited_out == 1
        assert after["hits"] == before["hits"]
    finally:
        cache.uninstall(engine)
        cache.clear()


@pytest.mark.usefixtures("seeded")
def test_stampede_wait_zero_never_locks_nor_waits(engine: Engine, redis_url: str) -> None:
    """stampede_wait=0: a miss takes no lock, and a miss that finds another process's lock reads
    the database at once: a lookup and a store, no poll, and the result is stored."""
    log = RedisCommandLog()
    client = (log.async_client if is_async(engine) else log.client)(
        redis_url, socket_timeout=1, retry=None
    )
    cache = QueryCache(client, namespace=unique_namespace("test-stampede-zero"), stampede_wait=0)
    cache.install(engine)
    plain = redis.Redis.from_url(redis_url)  # looks at the keys without being logged
    locks = "{" + cache.namespace + "}:l:*"
    locks_during_misses: list[Any] = []

    def look_for_locks(cursor: Any, sql: str, parameters: Any, context: Any) -> bool:
        # registered after install(): runs only for statements that reach the database
        locks_during_misses.extend(plain.keys(locks))
        return False

    event.listen(engine, "do_execute", look_for_locks)
    statement = select(Employee.name).order_by(Employee.id)
    try:
        with caching_sessionmaker(engine)() as session:
            assert list(session.scalars(statement)) == ["ann", "bob", "cid"]
        assert locks_during_misses == []
        [entry] = plain.keys("{" + cache.namespace + "}:e:*")
        plain.set(entry.replace(b":e:", b":l:"), b"another process", px=15_000)
        plain.delete(entry)

        log.clear()
        with caching_sessionmaker(engine)() as session:
            assert list(session.scalars(statement)) == ["ann", "bob", "cid"]
        assert log.commands == ["EVALSHA", f"{NO_REPLY}EVAL"]  # a lookup and a store: no poll
        stats = cache.stats()
        assert (stats["misses"], stats["stores"], stats["bypasses"]) == (2, 2, 0)
    finally:
        event.remove(engine, "do_execute", look_for_locks)
        cache.uninstall(engine)
        cache.clear()
