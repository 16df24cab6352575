"""Redis trouble, on a throwaway redis-server of the test's own: the application keeps answering
from the database, nothing raises into it, a failed call costs one timeout and then the circuit
breaker keeps Redis off the request path, and no stale entry is served after recovery."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, literal, select
from sqlalchemy.orm import Session, sessionmaker

from sa_redis_cache import QueryCache
from sa_redis_cache.round_trips import RedisCommandLog
from tests.conftest import (
    DatabaseReads,
    RedisServer,
    caching_sessionmaker,
    is_async,
    unique_namespace,
)
from tests.models import Employee

pytestmark = pytest.mark.usefixtures("seeded")


SENT = RedisCommandLog()  # the round trips tried, to prove the breaker stops them


def cache_on(engine: Engine, url: str, timeout: float = 0.2, **options: Any) -> QueryCache:
    """A cache of ``engine``'s flavor whose round trips land in SENT."""
    SENT.clear()
    make_client = SENT.async_client if is_async(engine) else SENT.client
    client = make_client(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None)
    return QueryCache(client, namespace="faults", **options)


def names(cached: sessionmaker[Session]) -> list[str]:
    with cached() as session:
        return list(session.scalars(select(Employee.name).order_by(Employee.id)))


def rename(cached: sessionmaker[Session], name: str) -> None:
    with cached() as session:
        session.get(Employee, 1).name = name  # type: ignore[union-attr]
        session.commit()


def test_dead_redis_reads_and_writes_go_on(engine: Engine, redis_server: RedisServer) -> None:
    redis_server.kill()
    cache = cache_on(engine, redis_server.url, retry_after=60)
    cache.install(engine)
    try:
        cached = caching_sessionmaker(engine)
        for _ in range(5):
            assert names(cached) == ["ann", "bob", "cid"]
        rename(cached, "written")
        assert names(cached)[0] == "written"
        stats = cache.stats()
        assert stats["hits"] == 0 and stats["errors"] >= 1
        assert len(SENT.commands) == 1  # one failed attempt, then the breaker
    finally:
        cache.uninstall(engine)


def test_frozen_redis_costs_one_timeout_then_nothing(
    engine: Engine, redis_server: RedisServer
) -> None:
    """Seven requests against a frozen Redis: one round trip is tried and times out, then the
    breaker keeps Redis off the request path. Bounded by wall clock with a generous margin (a
    timeout per request would take at least seven timeouts) and proven by counting round trips."""
    timeout = 1.0
    cache = cache_on(engine, redis_server.url, timeout=timeout, retry_after=60)
    cache.install(engine)
    try:
        cached = caching_sessionmaker(engine)
        assert names(cached) == ["ann", "bob", "cid"]
        calls = len(SENT.commands)
        redis_server.freeze()
        started = time.monotonic()
        for _ in range(5):
            assert names(cached) == ["ann", "bob", "cid"]
        rename(cached, "frozen")
        assert names(cached)[0] == "frozen"
        frozen_for = time.monotonic() - started
        assert len(SENT.commands) == calls + 1
        assert frozen_for < timeout + 3.0, f"{frozen_for:.1f}s: more than one timeout"
        assert cache.stats()["errors"] >= 1
        redis_server.thaw()
        cache._store.breaker = type(cache._store.breaker)(0.05)  # retry soon instead of in 60 s
        assert read_until_cache_recovers(cached, cache, "frozen")[0] == "frozen"
    finally:
        cache.uninstall(engine)


def read_until_cache_recovers(
    cached: sessionmaker[Session], cache: QueryCache, expected: str = "after"
) -> list[str]:
    """Read until the breaker lets Redis back in and a fresh entry is stored and hit; every read
    on the way must be right."""
    start = cache.stats()
    deadline = time.monotonic() + 10
    while True:
        assert names(cached)[0] == expected, "served a stale entry"
        now = cache.stats()
        if now["stores"] > start["stores"] and now["hits"] > start["hits"]:
            return names(cached)
        assert time.monotonic() < deadline, now


def test_restarted_empty_redis(engine: Engine, redis_server: RedisServer) -> None:
    cache = cache_on(engine, redis_server.url, retry_after=0.05)
    cache.install(engine)
    try:
        cached = caching_sessionmaker(engine)
        names(cached)
        names(cached)
        assert cache.stats()["hits"] == 1
        redis_server.kill()
        rename(cached, "after")  # the bump cannot be delivered
        assert names(cached)[0] == "after"
        redis_server.start()  # empty
        assert read_until_cache_recovers(cached, cache)[0] == "after"
    finally:
        cache.uninstall(engine)


def test_undelivered_bump_blocks_the_table_until_delivered(engine: Engine, tmp_path: Path) -> None:
    """Redis comes back with its old data (a partition heals): the entry it still holds is
    stale, so this process serves nothing of that table until its bump gets through."""
    server = RedisServer(tmp_path, "--dbfilename", "dump.rdb")
    server.start()
    cache = cache_on(engine, server.url, retry_after=0.05)
    cache.install(engine)
    try:
        cached = caching_sessionmaker(engine)
        names(cached)
        assert names(cached)[0] == "ann" and cache.stats()["hits"] == 1
        redis.Redis(port=server.port).save()
        server.kill()
        rename(cached, "after")
        server.start()  # with the stale entry and the old versions
        stale = redis.Redis(port=server.port)
        assert len(list(stale.scan_iter(match="{faults}:e:*"))) == 1
        reads = DatabaseReads(engine)
        assert read_until_cache_recovers(cached, cache)[0] == "after"
        reads.close()
        assert reads.count >= 1
    finally:
        cache.uninstall(engine)
        server.kill()


EVICTIONS = {
    "the clock and every version key": "{faults}:[vc]*",
    "the table's version key, the clock kept": "{faults}:v:*.employee",
    "the clock, the version keys kept": "{faults}:clock",
}


@pytest.mark.parametrize("evicted", EVICTIONS)
def test_evicted_version_keys_never_revive_old_entries(
    evicted: str, engine: Engine, redis_server: RedisServer
) -> None:
    """allkeys-lru may evict a version key or the clock but keep an entry: after a write, the
    entry stored before it must stay dead whatever was evicted."""
    cache = cache_on(engine, redis_server.url)
    cache.install(engine)
    try:
        cached = caching_sessionmaker(engine)
        assert names(cached) == names(cached) == ["ann", "bob", "cid"]
        assert cache.stats()["hits"] == 1
        client = redis.Redis(port=redis_server.port)
        [old_entry] = client.scan_iter(match="{faults}:e:*")
        rename(cached, "after")
        keys = list(client.scan_iter(match=EVICTIONS[evicted]))
        assert keys and client.delete(*keys) == len(keys)
        assert client.exists(old_entry)  # the entry stored before the write is kept
        assert names(cached) == ["after", "bob", "cid"]
        assert names(cached) == ["after", "bob", "cid"]
    finally:
        cache.uninstall(engine)


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-random"])
def test_eviction_under_memory_pressure_never_serves_stale(
    policy: str, engine: Engine, tmp_path: Path
) -> None:
    """Eviction takes entries, version keys and the clock (allkeys-random does not spare the
    recently used ones) while writes go on. Every read matches the database, above all the
    re-reads, after each write, of entries stored before it."""
    server = RedisServer(tmp_path, "--maxmemory", "3mb", "--maxmemory-policy", policy)
    server.start()
    cache = cache_on(engine, server.url)
    cache.install(engine)
    try:
        cached, plain = caching_sessionmaker(engine), sessionmaker(engine)
        padding = "x" * 10_000  # makes every entry big, so that memory runs out quickly

        def statement(tag: str) -> Any:
            return select(Employee.name, literal(f"{padding}{tag}")).order_by(Employee.id)

        def check(tag: str, step: int) -> None:
            with cached() as session:
                got = session.execute(statement(tag)).all()
            with plain() as session:
                assert got == session.execute(statement(tag)).all(), f"stale at step {step}"

        hot = [f"hot {k}" for k in range(6)]
        for step in range(20):
            rename(cached, f"name {step}")
            for tag in hot:  # stored before the write (unless evicted): must not be served
                check(tag, step)
            for k in range(8):  # memory pressure
                check(f"cold {step} {k}", step)
            for tag in hot:  # stored after the write: hits, unless evicted
                check(tag, step)
        info = redis.Redis(port=server.port).info("stats")
        assert info["evicted_keys"] > 0
        assert cache.stats()["hits"] > 0
    finally:
        cache.uninstall(engine)
        server.kill()


def test_lost_script_cache_is_reloaded_without_an_error(
    engine: Engine, redis_server: RedisServer
) -> None:
    """SCRIPT FLUSH (or a failover to a replica that never saw the scripts): the next call loads
    them again; the read is still served and nothing counts as an error."""
    cache = cache_on(engine, redis_server.url)
    cache.install(engine)
    try:
        cached = caching_sessionmaker(engine)
        names(cached)
        redis.Redis(port=redis_server.port).script_flush()
        SENT.clear()
        assert names(cached) == ["ann", "bob", "cid"]
        rename(cached, "after")
        assert names(cached)[0] == "after"
        assert names(cached)[0] == "after"
        stats = cache.stats()
        assert stats["errors"] == 0 and stats["hits"] == 2, stats
        # lookup and bump loaded once more (the store is sent with EVAL: it needs no loading)
        assert SENT.commands.count("SCRIPT") == 2
    finally:
        cache.uninstall(engine)


def test_a_client_that_decodes_responses_serves_hits(engine: Engine, redis_url: str) -> None:
    """Entries are binary: the cache reads them undecoded whatever the client's decode_responses."""
    client_class = redis.asyncio.Redis if is_async(engine) else redis.Redis
    client = client_class.from_url(redis_url, decode_responses=True, socket_timeout=1)
    cache = QueryCache(client, namespace=unique_namespace("faults-decoding"))
    cache.install(engine)
    try:
        cached = caching_sessionmaker(engine)
        assert names(cached) == names(cached) == ["ann", "bob", "cid"]
        rename(cached, "after")
        assert names(cached) == names(cached) == ["after", "bob", "cid"]
        stats = cache.stats()
        assert stats["errors"] == 0 and stats["hits"] == 2, stats
    finally:
        cache.uninstall(engine)
        cache.clear()


def test_a_server_that_refuses_client_reply_gets_answered_stores(
    engine: Engine, redis_server: RedisServer
) -> None:
    """A miss writes its store after ``CLIENT REPLY SKIP`` and reads no reply; where an ACL
    forbids that command, its error reply would be left on the connection: the cache asks once
    and then waits for every store's reply, and every later reply still matches its command."""
    admin = redis.Redis(port=redis_server.port)
    admin.acl_setuser(
        "limited", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
        commands=["+@all", "-client"],
    )  # fmt: skip
    url = f"redis://limited:secret@127.0.0.1:{redis_server.port}/0"
    cache = QueryCache.from_url(url, asyncio=is_async(engine), namespace=unique_namespace("acl"))
    cache.install(engine)
    try:
        cached = caching_sessionmaker(engine)
        for round_ in range(3):
            assert names(cached) == ["ann", "bob", "cid"]  # a miss (stored), then hits
            assert names(cached) == ["ann", "bob", "cid"]
            rename(cached, f"round {round_}")
            assert names(cached)[0] == f"round {round_}"
            rename(cached, "ann")
        stats = cache.stats()
        assert stats["errors"] == 0 and stats["hits"] >= 3 and stats["stores"] >= 3, stats
        assert cache._store._skip_replies is False
    finally:
        cache.uninstall(engine)
