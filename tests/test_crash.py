"""A writer killed between its database commit and its Redis bump: other processes must not serve
the old result, neither while its "being written" mark lives nor after the mark expires."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.engine import URL

from sa_redis_cache import QueryCache
from tests import processes
from tests.conftest import caching_sessionmaker, raw_client
from tests.models import Employee


@pytest.mark.usefixtures("seeded_mariadb")
def test_writer_killed_after_commit_before_bump(
    mariadb: Engine, mysql_url: URL, redis_url: str, query_cache: QueryCache
) -> None:
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)

    def first_name() -> str:
        with cached() as session:
            return session.scalars(select(Employee.name).order_by(Employee.id)).first() or ""

    assert first_name() == "ann"
    assert first_name() == "ann"
    assert query_cache.stats()["hits"] == 1  # the old result is cached

    lease = 1.0
    url = mysql_url.render_as_string(hide_password=False)
    processes.run(
        processes.commit_then_die, url, redis_url, query_cache.namespace, lease, "committed",
        exitcode=-9,
    )  # fmt: skip

    marker = raw_client(query_cache).keys("{" + query_cache.namespace + "}:w:*.employee")
    assert marker, "the dead writer's mark should still be there"
    before = query_cache.stats()
    assert first_name() == "committed"  # mark alive: read from the database, nothing stored
    assert query_cache.stats()["stores"] == before["stores"]
    assert query_cache.stats()["bypasses"] > before["bypasses"]

    deadline = time.monotonic() + 10 * lease
    while query_cache.stats()["stores"] == before["stores"]:  # until the mark expires
        assert first_name() == "committed"
        assert time.monotonic() < deadline
    assert first_name() == "committed"
    assert query_cache.stats()["hits"] > before["hits"]
