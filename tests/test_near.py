"""The near cache (opt-in): entries in process memory, served with no Redis round trip, within a
stated bound: a read may miss a commit that returned less than ``near_cache_lag`` before it
started, never an older one (the consistency checker measures it across processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from sa_redis_cache import QueryCache
from sa_redis_cache.near import NearCache, NearEntry
from sa_redis_cache.round_trips import RedisCommandLog
from tests.conftest import (
    RedisServer,
    cache_with,
    caching_sessionmaker,
    dispose,
    engine_like,
    is_async,
    unique_namespace,
)
from tests.models import Department, Employee

pytestmark = pytest.mark.usefixtures("seeded")
LAG = 0.2


def names(factory: sessionmaker[Session]) -> list[str]:
    with factory() as session:
        return list(session.scalars(select(Employee.name).order_by(Employee.id)))


def until(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)  # polling toward a deadline


def near_of(cache: QueryCache) -> NearCache:
    near = cache._near
    assert near is not None
    return near


def warm(cache: QueryCache, factory: sessionmaker[Session]) -> list[str]:
    """Read until the near cache serves (its listener has started and proven its lag)."""
    result = names(factory)
    until(lambda: (names(factory), cache.stats()["near_hits"])[1] > 0, "a near hit")
    return result


def test_a_near_hit_costs_no_redis_round_trip(engine: Engine, redis_url: str) -> None:
    log = RedisCommandLog()
    make = log.async_client if is_async(engine) else log.client
    cache = QueryCache(
        make(redis_url, socket_timeout=1, retry=None),
        namespace=unique_namespace("near"),
        near_cache=100,
        near_cache_lag=LAG,
    )
    cache.install(engine)
    try:
        cached = caching_sessionmaker(engine)
        expected = warm(cache, cached)
        log.clear()
        before = cache.stats()
        assert names(cached) == expected == ["ann", "bob", "cid"]
        after = cache.stats()
        assert log.commands == []
        assert after["near_hits"] == before["near_hits"] + 1
        assert after["hits"] == before["hits"] + 1
    finally:
        cache.close()
        cache.uninstall(engine)
        cache.clear()


def test_a_process_reads_its_own_writes_at_once(engine: Engine, redis_url: str) -> None:
    """A commit here drops this process's near entries before ``commit()`` returns: no lag for
    one's own writes."""
    with cache_with(engine, redis_url, near_cache=100, near_cache_lag=30) as (cache, _):
        cached = caching_sessionmaker(engine)
        warm(cache, cached)
        near = near_of(cache)
        resume = threading.Event()
        real_handle = near._handle

        def stall(message: Any) -> None:  # no message is applied: only the direct drop helps
            resume.wait()
            real_handle(message)

        near._handle = stall  # type: ignore[method-assign]
        try:
            with cached() as session:
                session.execute(update(Employee).where(Employee.id == 1).values(name="mine"))
                session.commit()
            assert names(cached)[0] == "mine"
        finally:
            resume.set()
            cache.close()


def test_a_lagging_listener_stops_serving_from_memory_within_the_lag(
    engine: Engine, redis_url: str
) -> None:
    """The listener stops applying messages (a stalled process): another process's commit is
    missed only by reads that start less than the lag after it returned; then reads go to
    Redis and see it."""
    with cache_with(engine, redis_url, near_cache=100, near_cache_lag=LAG) as (cache, _):
        cached = caching_sessionmaker(engine)
        warm(cache, cached)
        near = near_of(cache)
        stalled = threading.Event()
        resume = threading.Event()
        real_handle = near._handle

        def stall(message: Any) -> None:
            stalled.set()
            resume.wait()
            real_handle(message)

        near._handle = stall  # type: ignore[method-assign]
        until(stalled.is_set, "the listener stalled on its next message")
        other = QueryCache.from_url(redis_url, asyncio=is_async(engine), namespace=cache.namespace)
        elsewhere = engine_like(engine)
        other.install(elsewhere)
        try:
            with caching_sessionmaker(elsewhere)() as session:
                session.get(Employee, 1).name = "elsewhere"  # type: ignore[union-attr]
                session.commit()
            returned = time.monotonic()
            while True:
                started = time.monotonic()
                seen = names(cached)[0]
                if seen == "elsewhere":
                    break
                assert started - returned < LAG, "a read missed a commit older than the lag"
                assert time.monotonic() - returned < 10
            hits = cache.stats()["near_hits"]
            assert names(cached)[0] == "elsewhere"
            assert cache.stats()["near_hits"] == hits  # the strict path, while stalled
        finally:
            resume.set()
            other.uninstall(elsewhere)
            dispose(elsewhere)
            cache.close()


def test_a_broken_listener_connection_drops_every_entry(
    engine: Engine, redis_server: RedisServer
) -> None:
    """Messages sent while the listener was disconnected are lost: after it resubscribes, the
    near cache starts empty, and reads are right throughout."""
    cache = QueryCache.from_url(
        redis_server.url,
        asyncio=is_async(engine),
        namespace=unique_namespace("near"),
        near_cache=100,
        near_cache_lag=LAG,
    )
    cache.install(engine)
    try:
        cached = caching_sessionmaker(engine)
        warm(cache, cached)
        near = near_of(cache)
        assert len(near) >= 1
        generation = near.generation
        redis.Redis(port=redis_server.port).client_kill_filter(_type="pubsub")
        until(lambda: near.generation > generation, "the listener resubscribed")
        assert len(near) == 0  # what was held before the break is gone
        assert names(cached) == ["ann", "bob", "cid"]
        warm(cache, cached)  # and it serves again
    finally:
        cache.close()
        cache.uninstall(engine)


def test_a_snapshot_older_than_an_entry_is_never_served_it(
    mariadb: Engine, seeded_mariadb: Engine, redis_url: str
) -> None:
    """A REPEATABLE READ transaction whose snapshot predates a commit must not be served a near
    entry computed after that commit: the database answers as of its snapshot."""
    with cache_with(mariadb, redis_url, near_cache=100, near_cache_lag=LAG) as (cache, _):
        cached = caching_sessionmaker(mariadb)
        warm(cache, cached)
        with cached() as reader:
            assert reader.scalars(select(Department.name).order_by(Department.id)).all() == [
                "sales",
                "ops",
            ]  # the snapshot
            with cached() as writer:
                writer.get(Employee, 1).name = "after"  # type: ignore[union-attr]
                writer.commit()
            assert names(cached)[0] == "after"  # a fresh entry, in the near cache
            assert reader.scalars(select(Employee.name).order_by(Employee.id)).first() == "ann"
        cache.close()


def test_a_dead_binlog_watcher_stops_near_hits(engine: Engine, redis_url: str) -> None:
    """With ``require_watcher``, the listener proves its lag only while every watcher's
    heartbeat is alive: without one, nothing is served from memory."""
    with cache_with(
        engine, redis_url, near_cache=100, near_cache_lag=LAG, require_watcher=True
    ) as (cache, _):
        inspector = redis.Redis.from_url(redis_url)
        [heartbeat] = near_of(cache).heartbeats
        inspector.set(heartbeat, "watcher", px=60_000)
        cached = caching_sessionmaker(engine)
        warm(cache, cached)
        inspector.delete(heartbeat)
        until(lambda: time.monotonic() >= near_of(cache)._valid_until, "the lease ran out")
        hits = cache.stats()["near_hits"]
        assert names(cached) == ["ann", "bob", "cid"]
        assert cache.stats()["near_hits"] == hits
        cache.close()


def _entry(rows: Any, versions: tuple[int, ...] = (1,), size: int = 10) -> NearEntry:
    return NearEntry((("c",),), rows, "epoch", versions, ("v:t",), size)


def _near(**options: Any) -> NearCache:
    settings = {"max_entries": 10, "max_bytes": 1000, "lag": 1.0, **options}
    return NearCache(lambda: redis.Redis(), "bumps", "pings", **settings)


def test_the_near_cache_keeps_to_its_bounds_and_refuses_what_it_must() -> None:
    near = _near(max_entries=2, max_bytes=25)
    for key in ("a", "b", "c"):
        near.put(key, _entry([(1,)]), near.generation)
    assert len(near) == 2  # the oldest went
    near.put("big", _entry([(1,)], size=26), near.generation)
    assert "big" not in near._entries  # over the byte bound on its own
    near.put("set", _entry([({"x"},)]), near.generation)
    assert "set" not in near._entries  # a mutable value would be shared between requests
    near.put("old", _entry([(1,)]), near.generation - 1)
    assert "old" not in near._entries  # looked up before a reconnection
    near._apply("epoch\n5\n0\nv:t")
    assert len(near) == 0  # every entry of the bumped table dropped
    near.put("stale", _entry([(1,)], versions=(4,)), near.generation)
    assert "stale" not in near._entries  # computed before a bump that already arrived
    near.put("fresh", _entry([(1,)], versions=(5,)), near.generation)
    assert "fresh" in near._entries
    near._apply("other-epoch\n1\n0\nv:u")
    assert len(near) == 0  # another epoch: the clock was lost, nothing older holds


def test_entries_kept_while_the_listener_was_away_are_dropped_when_it_is_back(
    engine: Engine, redis_server: RedisServer
) -> None:
    """Reads during a reconnection (strict lookups) keep entries whose invalidations no one
    listened for: the listener drops everything once it has resubscribed."""
    cache = QueryCache.from_url(
        redis_server.url,
        asyncio=is_async(engine),
        namespace=unique_namespace("near"),
        near_cache=100,
        near_cache_lag=LAG,
    )
    cache.install(engine)
    other = QueryCache.from_url(
        redis_server.url, asyncio=is_async(engine), namespace=cache.namespace
    )
    elsewhere = engine_like(engine)
    other.install(elsewhere)
    try:
        cached = caching_sessionmaker(engine)
        warm(cache, cached)
        near = near_of(cache)
        subscribed = threading.Event()
        in_the_gap = threading.Event()
        real_connect = near._connect

        def slow_reconnection() -> redis.Redis:
            in_the_gap.set()
            subscribed.wait()  # nobody listens until the test says so
            return real_connect()

        near._connect = slow_reconnection
        redis.Redis(port=redis_server.port).client_kill_filter(_type="pubsub")
        until(in_the_gap.is_set, "the listener is reconnecting")
        assert names(cached)[0] == "ann"  # a strict read, its entry kept
        with caching_sessionmaker(elsewhere)() as session:  # published while no one listened
            session.get(Employee, 1).name = "in the gap"  # type: ignore[union-attr]
            session.commit()
        subscribed.set()
        until(lambda: time.monotonic() < near._valid_until, "the listener caught up")
        assert names(cached)[0] == "in the gap"  # the first read, with the lease alive
    finally:
        other.uninstall(elsewhere)
        dispose(elsewhere)
        cache.close()
        cache.uninstall(engine)
