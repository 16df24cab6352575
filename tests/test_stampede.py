"""Stampede protection: when many processes miss the same entry at once, one computes it and the
others wait (boundedly) for its result instead of all hitting the database."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.engine import URL

from sa_redis_cache import QueryCache
from tests import processes
from tests.conftest import SYNC_FLAVORS, caching_sessionmaker, unique_namespace
from tests.models import Employee

# not yet run in the async flavors: these tests inspect Redis through the cache's own client
pytestmark = pytest.mark.flavors(*SYNC_FLAVORS)


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


@pytest.mark.usefixtures("seeded")
def test_waiting_is_bounded_then_the_database_answers(engine: Engine, redis_url: str) -> None:
    """The lock holder dies before storing: the others wait no longer than stampede_wait (the
    lock lives as long), then read the database."""
    cache = QueryCache.from_url(
        redis_url, namespace=unique_namespace("test-stampede-bound"), stampede_wait=0.2
    )
    cache.clear()
    cache.install(engine)
    cached = caching_sessionmaker(engine)
    statement = select(Employee.name).order_by(Employee.id)

    def holder_dies(cursor: Any, sql: str, parameters: Any, context: Any) -> bool:
        raise RuntimeError("the lock holder died before its query returned")

    try:
        event.listen(engine, "do_execute", holder_dies)  # runs after the lookup took the lock
        with pytest.raises(RuntimeError), cached() as session:
            session.execute(statement).all()
        event.remove(engine, "do_execute", holder_dies)
        assert cache.client.keys("{" + cache.namespace + "}:l:*")

        before = cache.stats()
        with cached() as session:
            assert list(session.scalars(statement)) == ["ann", "bob", "cid"]
        after = cache.stats()
        # it waited, then either took over the expired lock (a miss) or gave up (a bypass)
        waited_out = (after["misses"] - before["misses"]) + (after["bypasses"] - before["bypasses"])
        assert waited_out == 1
        assert after["hits"] == before["hits"]
    finally:
        cache.uninstall(engine)
        cache.clear()
