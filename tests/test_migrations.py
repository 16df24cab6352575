"""Alembic: upgrade and downgrade on MariaDB and SQLite, from Python and from the alembic CLI, and
schema changes made through an engine with the cache installed invalidate what they touch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, select
from sqlalchemy.engine import URL

from example_app.migrations import ALEMBIC_INI, downgrade, seed, upgrade
from example_app.models import Department
from example_app.settings import make_engine
from sa_redis_cache import QueryCache
from tests.conftest import DatabaseReads, caching_sessionmaker


@pytest.fixture(params=["mariadb", "sqlite"])
def demo_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "mariadb":
        url: URL = request.getfixturevalue("demo_mysql_url")
        return url.render_as_string(hide_password=False)
    return f"sqlite:///{tmp_path / 'demo.db'}"


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_head_and_downgrade_base(demo_url: str) -> None:
    engine = make_engine(demo_url)
    upgrade(engine)
    assert tables(engine) == {"department", "employee"}
    indexes = {i["name"] for i in inspect(engine).get_indexes("department")}
    assert "ix_department_name" in indexes
    assert inspect(engine).get_foreign_keys("employee")[0]["referred_table"] == "department"
    downgrade(engine)
    assert tables(engine) == set()
    engine.dispose()


def test_the_alembic_command_line(demo_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    for args in (["upgrade", "head"], ["downgrade", "base"]):
        subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), "-x", f"url={demo_url}",
             *args],
            check=True, env=env, capture_output=True, timeout=120,
        )  # fmt: skip
    engine = make_engine(demo_url)
    assert tables(engine) == set()
    engine.dispose()


def test_migrations_through_a_cached_engine_invalidate(
    demo_url: str, query_cache: QueryCache
) -> None:
    engine = make_engine(demo_url)
    query_cache.install(engine)
    cached = caching_sessionmaker(engine)
    upgrade(engine)
    seed(engine)
    with cached() as session:
        assert len(session.scalars(select(Department)).all()) == 3  # cached now
    downgrade(engine)
    upgrade(engine)  # the tables are back, empty
    reads = DatabaseReads(engine)
    with cached() as session:
        assert session.scalars(select(Department)).all() == []
    reads.close()
    assert reads.count == 1
    downgrade(engine)
    query_cache.uninstall(engine)
    engine.dispose()
