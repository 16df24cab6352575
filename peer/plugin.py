"""pytest plugin: one :class:`~sa_redis_cache.QueryCache` on every engine the suite creates,
caching every read.

Loaded into SQLAlchemy's own test suite with ``-p peer.plugin`` by :mod:`peer.run`, in both of
its runs; ``--peer-cache`` is what turns the cache on. It must not change what a test observes
other than through the cache itself, so:

- engines are reached through ``Dialect.engine_created``, the hook ``create_engine`` calls on
  every new engine (the one meant for "dialects and wrappers to apply events"), not by editing
  URLs or ``create_engine`` arguments that tests build and inspect;
- reads are cached by ``cache_by_default=True``, which leaves every ``execution_options``
  dictionary as the test made it (no ``redis_cache`` key appears anywhere);
- the cache lives on a namespace of its own on the shared Redis, deleted at the end.

A run whose cache served nothing would prove nothing: the counters are printed at the end and,
with ``--peer-stats FILE``, written as JSON for the runner, which refuses a run without hits.
Each test's own hits, misses and bypasses (in its body, this thread) go to its junit
properties, so a failure can be told from a test the cache never served.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

_DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sa_redis_cache peer", "the cache on every engine (make peer)")
    group.addoption(
        "--peer-cache",
        action="store_true",
        help="install the cache on every engine the suite creates, caching every read",
    )
    group.addoption(
        "--peer-select",
        default=None,
        metavar="FILE",
        help="run only the tests whose ids (one a line) are in FILE: SQLAlchemy generates a "
        "class per backend during collection, which command-line test ids cannot name",
    )
    group.addoption(
        "--peer-redis-url",
        default=os.environ.get("SA_REDIS_CACHE_REDIS_URL", _DEFAULT_REDIS),
        help="Redis the cache uses (default: %(default)s)",
    )
    group.addoption(
        "--peer-stats",
        default=None,
        metavar="FILE",
        help="write the cache's counters as JSON to FILE at the end",
    )


class CacheEverywhere:
    """Installs one cache on every engine created between :meth:`start` and :meth:`stop`."""

    def __init__(self, redis_url: str, namespace: str) -> None:
        self.redis_url = redis_url
        self.namespace = namespace
        self._original: Any = None
        self.cache: Any = None

    def start(self) -> None:
        # imported here, after SQLAlchemy's conftest has set up its import path
        import redis
        from sqlalchemy.engine.interfaces import Dialect

        from sa_redis_cache import QueryCache

        cache = QueryCache.from_url(self.redis_url, namespace=self.namespace, cache_by_default=True)
        try:
            cache.client.ping()
        except redis.RedisError as exc:  # a cache that cannot answer would make a plain run
            raise pytest.UsageError(
                f"peer: Redis at {self.redis_url} is not reachable: {exc}"
            ) from exc
        self.cache = cache
        # the classmethod as Dialect defines it; no dialect in SQLAlchemy overrides it
        self._original = Dialect.__dict__["engine_created"]
        original: Callable[[type[Any], Any], None] = self._original.__func__

        def engine_created(cls: type[Any], engine: Any) -> None:
            original(cls, engine)
            cache.install(engine)  # idempotent: called twice for wrapping dialects

        Dialect.engine_created = classmethod(engine_created)  # type: ignore[assignment,method-assign]

    def stop(self) -> dict[str, Any]:
        from sqlalchemy.engine.interfaces import Dialect

        if self._original is not None:
            Dialect.engine_created = self._original  # type: ignore[method-assign]
            self._original = None
        cache = self.cache
        summary = self.summary()
        for engine in cache.engines:
            cache.uninstall(engine)
        summary["keys_deleted"] = cache.clear()
        return summary

    def summary(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "engines": len(self.cache.engines),
            **self.cache.stats(),
        }


_STATE = pytest.StashKey[CacheEverywhere]()


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("--peer-cache"):
        return
    run_id = os.environ.get("SA_REDIS_CACHE_TEST_ID", "main")
    namespace = f"peer-{run_id}-{uuid.uuid4().hex[:8]}"[:64]
    state = CacheEverywhere(str(config.getoption("--peer-redis-url")), namespace)
    state.start()
    config.stash[_STATE] = state


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = config.getoption("--peer-select")
    if not path:
        return
    with open(path) as f:
        wanted = {line.strip() for line in f if line.strip()}
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in wanted])
    items[:] = [item for item in items if item.nodeid in wanted]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    from sa_redis_cache import record

    with record() as counts:
        try:
            return (yield)
        finally:
            for event in ("hits", "misses", "bypasses", "errors"):
                item.user_properties.append((f"cache_{event}", counts[event]))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        counts = state.summary()
        terminalreporter.write_sep("=", "sa_redis_cache on every engine")
        terminalreporter.write_line(" ".join(f"{k}={v}" for k, v in counts.items()))


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    del config.stash[_STATE]
    summary = state.stop()
    path = config.getoption("--peer-stats")
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
