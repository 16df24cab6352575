"""pytest fixtures for applications that use sa_redis_cache (registered as a pytest plugin).

- ``--redis-url`` (or ``SA_REDIS_CACHE_REDIS_URL``): the Redis the fixtures use.
- ``query_cache``: a :class:`QueryCache` on a namespace of its own, uninstalled from every engine
  and cleared after the test; ``async_query_cache`` the same on a ``redis.asyncio`` client, for an
  application's ``AsyncEngine`` (cleared through a sync client, whatever event loop the test ran).
- ``cache_recorder``: ``with cache_recorder(query_cache) as counts:`` counts what a cache did
  inside the block (hits, misses, bypasses, ...), in every thread, so a test can assert that an
  endpoint was served from the cache.

With ``CI`` set in the environment a missing Redis fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
import redis

from .api import QueryCache
from .stats import EVENTS, Counts

_DEFAULT_URL = "redis://127.0.0.1:6379/0"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=os.environ.get("SA_REDIS_CACHE_REDIS_URL", _DEFAULT_URL),
        help="Redis used by the sa_redis_cache fixtures (default: %(default)s)",
    )


def service_missing(what: str, error: Exception) -> None:
    """Fail under CI (a missing service must never pass as a skip there), skip elsewhere."""
    message = f"{what} is not reachable: {error}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config) -> str:
    url = str(pytestconfig.getoption("--redis-url"))
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        service_missing(f"Redis at {url}", exc)
    return url


@pytest.fixture
def query_cache(redis_url: str) -> Iterator[QueryCache]:
    cache = QueryCache.from_url(redis_url, namespace=f"test-{uuid.uuid4().hex[:12]}")
    try:
        yield cache
    finally:
        for engine in cache.engines:
            cache.uninstall(engine)
        cache.clear()


@pytest.fixture
def async_query_cache(redis_url: str) -> Iterator[QueryCache]:
    cache = QueryCache.from_url(redis_url, asyncio=True, namespace=f"test-{uuid.uuid4().hex[:12]}")
    try:
        yield cache
    finally:
        for engine in cache.engines:
            cache.uninstall(engine)
        QueryCache.from_url(redis_url, namespace=cache.namespace).clear()


@pytest.fixture
def cache_recorder() -> Callable[[QueryCache], AbstractContextManager[Counts]]:
    @contextmanager
    def recorder(cache: QueryCache) -> Iterator[Counts]:
        before = cache.stats()
        counts = Counts()
        try:
            yield counts
        finally:
            after = cache.stats()
            for event in EVENTS:
                counts[event] = after[event] - before[event]

    return recorder
