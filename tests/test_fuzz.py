"""The demo's API under a fuzzer: schemathesis generates requests from the app's own OpenAPI
document and checks every answer against it, on the real MariaDB and Redis.

Every check is on: no server error, every status and header documented, every body of its
documented shape, invalid input refused and valid input accepted, 405 with ``Allow`` for methods a
path lacks, and the stateful ones: what was just created can be read (no stale cached "not found"),
what was just deleted is gone (no stale cached row). The stateful run follows the OpenAPI links of
the create operations (create, read, update, delete in sequences), so reads are served from the
cache between writes; the test checks that they were.

The seed is fixed and the number of examples bounded so the run stays short; ``schemathesis run``
against ``make serve`` with more examples is the long version (README, "The demo").

The apps under test are :data:`APP_FACTORIES`: an async variant of the demo joins as one more entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.config import SchemathesisConfig
from sqlalchemy import make_url

from example_app.app import create_app
from example_app.migrations import downgrade, seed, upgrade
from example_app.models import Department, Employee
from example_app.settings import make_engine
from sa_redis_cache import QueryCache
from tests.conftest import fresh_database, unique_namespace

SEED = 20261125
MAX_EXAMPLES = 25
"""Per operation, for the fuzzing phase (the coverage phase adds its own boundary cases)."""
STATEFUL_SCENARIOS = 40
STATEFUL_STEPS = 10

CONFIG: dict[str, Any] = {
    "seed": SEED,
    "checks": {"enabled": True},
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": True},
    },
    "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
}

AppFactory = Callable[..., FastAPI]


def create_async_app(database_url: str, redis_url: str, namespace: str) -> FastAPI:
    """The demo on AsyncSession: the same app, on asyncmy and a redis.asyncio cache."""
    url = make_url(database_url).set(drivername="mysql+asyncmy")
    return create_app(url.render_as_string(hide_password=False), redis_url, namespace)


APP_FACTORIES = [
    pytest.param(create_app, id="sync"),
    pytest.param(create_async_app, id="asyncio"),
]
"""The demo apps to fuzz, each called as ``factory(database_url, redis_url, namespace=...)``."""


@pytest.fixture(scope="module", params=APP_FACTORIES)
def demo_app(request: pytest.FixtureRequest, redis_url: str) -> Iterator[FastAPI]:
    """The demo on a database of its own on MariaDB and a namespace of its own on Redis,
    migrated and seeded, for all the fuzz tests of one factory."""
    factory: AppFactory = request.param
    for url in fresh_database("_fuzz"):
        namespace = unique_namespace("fuzz")
        app = factory(url.render_as_string(hide_password=False), redis_url, namespace=namespace)
        # migrations and resets through a sync engine with a cache of its own on the namespace,
        # so that the app's cache sees those writes as it sees any other
        writer = make_engine(url.render_as_string(hide_password=False))
        writer_cache = QueryCache.from_url(redis_url, namespace=namespace)
        writer_cache.install(writer)
        app.state.fuzz_writer, app.state.fuzz_writer_cache = writer, writer_cache
        upgrade(writer)
        seed(writer)
        try:
            with TestClient(app):  # runs the app's lifespan (its engine and client close after)
                yield app
        finally:
            downgrade(writer)
            writer_cache.uninstall(writer)
            writer_cache.clear()
            writer.dispose()


@pytest.fixture
def api_schema(demo_app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi(
        "/openapi.json", demo_app, config=SchemathesisConfig.from_dict(CONFIG)
    )


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_answers_as_documented(case: schemathesis.Case) -> None:
    case.call_and_validate()


def reset_data(app: FastAPI) -> None:
    """Back to the seeded rows, ids counting from 1 again, through the app's own engine (so the
    cache sees these writes as it sees any other)."""
    engine = app.state.fuzz_writer
    with engine.begin() as connection:
        connection.execute(Employee.__table__.delete())
        connection.execute(Department.__table__.delete())
    if engine.dialect.name == "mysql":
        with engine.connect() as connection:
            for table in (Employee.__table__, Department.__table__):
                connection.exec_driver_sql(f"ALTER TABLE {table.name} AUTO_INCREMENT = 1")
    seed(engine)


def test_create_read_update_delete_sequences_stay_fresh(api_schema: Any, demo_app: FastAPI) -> None:
    cache = demo_app.state.cache
    before = cache.stats()

    class Workflow(api_schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Every sequence starts from the same rows and an empty cache: Hypothesis requires
            # that the same choices lead to the same draws, and which steps can follow depends on
            # what the API answered, so a failure must replay exactly to be reported as itself.
            reset_data(demo_app)
            demo_app.state.fuzz_writer_cache.clear()  # the namespace, from a sync client

    Workflow.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            derandomize=True,  # a fixed seed for the sequences
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
    )
    after = cache.stats()
    # the sequences read through the cache (hits) between writes that invalidated it
    assert after["hits"] > before["hits"], (before, after)
    assert after["invalidations"] > before["invalidations"]
