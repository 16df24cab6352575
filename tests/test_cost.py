"""Cost and footprint: one Redis round trip per hit, one per miss (its store is written with its
reply skipped), two per committing transaction that wrote (announce before the commit, bump after
it); no KEYS or SCAN on any of them; a TTL on every key; nothing in Redis grows with the number of
entries per table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select

from sa_redis_cache import QueryCache
from sa_redis_cache.keys import KeyBuilder, server_identity
from sa_redis_cache.round_trips import NO_REPLY, RedisCommandLog, round_trips
from tests.conftest import (
    DatabaseReads,
    caching_sessionmaker,
    in_flavor,
    is_async,
    unique_namespace,
)
from tests.models import Department, Employee, Project

pytestmark = pytest.mark.usefixtures("seeded")


SENT = RedisCommandLog()


@pytest.fixture
def recorded(engine: Engine, redis_url: str) -> Iterator[tuple[QueryCache, Any]]:
    make_client = SENT.async_client if is_async(engine) else SENT.client
    cache = QueryCache(make_client(redis_url, socket_timeout=1), namespace=unique_namespace("cost"))
    cache.install(engine)
    cached = caching_sessionmaker(engine)

    def load_the_scripts() -> None:  # lookup and store, and the bump
        with cached() as session:
            session.scalars(select(Department)).all()
        cache.invalidate("badge")

    in_flavor(engine, load_the_scripts)
    SENT.clear()
    yield cache, cached
    cache.uninstall(engine)
    in_flavor(engine, cache.clear)


def test_round_trips_per_hit_miss_and_commit(recorded: tuple[QueryCache, Any]) -> None:
    _, cached = recorded
    with cached() as session:
        session.scalars(select(Employee).where(Employee.id == 1)).one()
    # a miss: the lookup, and the store written with its reply skipped (one round trip)
    assert SENT.commands == ["EVALSHA", f"{NO_REPLY}EVAL"]
    assert round_trips(SENT.commands) == 1

    SENT.clear()
    with cached() as session:
        session.scalars(select(Employee).where(Employee.id == 1)).one()
    assert SENT.commands == ["EVALSHA"]  # hit

    SENT.clear()
    with cached() as session:
        project = session.get(Project, 1)
        session.get(Employee, 2).name = "b"  # type: ignore[union-attr]
        project.title = "p"  # type: ignore[union-attr]
        session.commit()
    # the two gets (misses: lookup + unanswered store), then one announce + one bump for all
    # the tables together
    assert SENT.commands.count("EVALSHA") == 2 + 2
    assert SENT.commands.count(f"{NO_REPLY}EVAL") == 2
    assert round_trips(SENT.commands) == 2 + 2


def test_every_key_has_a_ttl_and_none_grows_per_entry(
    recorded: tuple[QueryCache, Any], redis_inspector: redis.Redis
) -> None:
    cache, cached = recorded
    client = redis_inspector
    with cached() as session:
        for employee_id in range(1, 200):
            session.get(Employee, employee_id)
        session.get(Employee, 1).name = "x"  # type: ignore[union-attr]
        session.commit()
    keys = list(client.scan_iter(match="{" + cache.namespace + "}:*"))
    kinds: dict[str, int] = {}
    for key in keys:
        assert client.pttl(key) > 0, key
        kind = key.decode().split(":")[1]
        kinds[kind] = kinds.get(kind, 0) + 1
        if client.type(key) != b"string":  # the clock hash and write markers stay small
            assert client.memory_usage(key) < 1024, key
    assert kinds["e"] >= 199  # one key per entry ...
    assert len(keys) - kinds["e"] < 20  # ... and a handful of others, whatever the entry count


def test_no_key_outside_the_namespace(recorded: tuple[QueryCache, Any]) -> None:
    cache, cached = recorded
    with cached() as session:
        session.get(Employee, 1).name = "y"  # type: ignore[union-attr]
        session.commit()
    cache.invalidate()
    touched = [c for c in SENT.commands if c not in {"EVALSHA", "HGET", f"{NO_REPLY}EVAL"}]
    assert touched == []


def test_clear_removes_only_its_namespace(engine: Engine, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    bystander = "{" + unique_namespace("test-bystander") + "}:x"
    client.set(bystander, 1, px=60_000)
    cache = QueryCache.from_url(
        redis_url, asyncio=is_async(engine), namespace=unique_namespace("test-clear")
    )
    cache.install(engine)
    try:
        with caching_sessionmaker(engine)() as session:
            session.scalars(select(Employee)).all()
        assert cache.clear() >= 3
        assert list(client.scan_iter(match="{" + cache.namespace + "}:*")) == []
        assert client.get(bystander) == b"1"
    finally:
        cache.uninstall(engine)
        client.delete(bystander)


def test_require_watcher_keeps_a_hit_at_one_round_trip(
    engine: Engine, redis_url: str, redis_inspector: redis.Redis
) -> None:
    """The binlog watcher's heartbeat is checked inside the lookup script: no extra command.
    Without a heartbeat every read goes to the database, still in one round trip."""
    make_client = SENT.async_client if is_async(engine) else SENT.client
    client = redis_inspector
    cache = QueryCache(
        make_client(redis_url, socket_timeout=1),
        namespace=unique_namespace("test-cost"),
        require_watcher=True,
    )
    cache.install(engine)
    heartbeat = KeyBuilder(cache.namespace, server_identity(engine.url), "", "").heartbeat
    reads = DatabaseReads(engine)
    cached = caching_sessionmaker(engine)
    try:
        client.set(heartbeat, "watcher", px=60_000)
        with cached() as session:
            session.scalars(select(Employee).where(Employee.id == 1)).one()
        SENT.clear()
        reads.reset()
        with cached() as session:
            session.scalars(select(Employee).where(Employee.id == 1)).one()
        assert SENT.commands == ["EVALSHA"]  # hit
        assert reads.count == 0

        client.delete(heartbeat)
        SENT.clear()
        for _ in range(3):
            with cached() as session:
                session.scalars(select(Employee).where(Employee.id == 1)).one()
        assert SENT.commands == ["EVALSHA"] * 3  # lookups, no store
        assert reads.count == 3
    finally:
        reads.close()
        cache.uninstall(engine)
        cache.clear()
