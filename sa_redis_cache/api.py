"""What users call: :class:`QueryCache`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio
from redis.cluster import RedisCluster
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from .config import CacheConfig, normalize_table_name
from .errors import CacheConfigurationError
from .invalidation import Invalidator
from .keys import bumps_channel, near_ping_channel, server_identity
from .near import NearCache, sync_client_like
from .stats import Stats
from .store import store_for
from .tables import ALL_TABLES
from .wiring import EngineWiring

log = logging.getLogger("sa_redis_cache")

DEFAULT_SOCKET_TIMEOUT = 0.25
"""Seconds ``from_url`` gives Redis to answer: a hung Redis costs a request at most this much once,
then the circuit breaker keeps it off the request path for ``retry_after`` seconds."""

RedisClient = redis.Redis | redis.asyncio.Redis | RedisCluster


class QueryCache:
    """A Redis query cache shared by the engines it is installed on.

    :param client: a ``redis.Redis`` (or ``RedisCluster``) for ``Engine``\\ s, or a
        ``redis.asyncio.Redis`` for ``AsyncEngine``\\ s. Give it a short ``socket_timeout``;
        :meth:`from_url` does.
    :param namespace: prefix of every key (letters, digits, ``_ . -``). Caches with different
        namespaces share nothing, and :meth:`clear` touches only its own.
    :param ttl: seconds an entry lives at most; ``redis_cache_ttl`` overrides it per statement.
    :param uncached_tables: reads that touch one of these tables always go to the database.
    :param max_entry_bytes: results larger than this once serialized are not stored.
    :param write_lease: seconds a table stays marked "being written" if a writer dies between its
        database commit and its Redis bump; while marked, nobody serves or stores it.
    :param retry_after: seconds Redis stays off the request path after an error.
    :param stampede_wait: when another process is already computing a missing entry, seconds to
        wait for its result before reading the database too (0: never wait).
    :param cache_by_default: cache every read of the installed engines unless its session or
        statement says ``redis_cache=False`` (default: only where ``redis_cache=True`` is set).
    :param require_watcher: serve and store entries only while a binlog watcher
        (``sa-redis-cache watch-binlog``) following the engine's database server is alive and
        caught up; otherwise every read goes to the database. For deployments where other
        clients write the database: a dead watcher then never means stale reads.
    :param near_cache: keep up to this many entries decoded in process memory and serve them with
        no Redis round trip (0, the default: no near cache). Weaker than the strict guarantee, by
        a stated bound: a read from the near cache may miss a commit that returned less than
        ``near_cache_lag`` seconds before it started. See near.py.
    :param near_cache_bytes: the near cache's size bound in entry bytes.
    :param near_cache_lag: the bound above, in seconds.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        namespace: str = "sa_redis_cache",
        ttl: int = 86400,
        uncached_tables: Iterable[str] = (),
        max_entry_bytes: int = 1 << 20,
        write_lease: float = 30.0,
        retry_after: float = 5.0,
        stampede_wait: float = 0.5,
        cache_by_default: bool = False,
        require_watcher: bool = False,
        near_cache: int = 0,
        near_cache_bytes: int = 64 << 20,
        near_cache_lag: float = 0.1,
    ) -> None:
        self.config = CacheConfig.build(
            namespace=namespace,
            ttl=ttl,
            uncached_tables=uncached_tables,
            max_entry_bytes=max_entry_bytes,
            write_lease=write_lease,
            retry_after=retry_after,
            stampede_wait=stampede_wait,
            cache_by_default=cache_by_default,
            require_watcher=require_watcher,
            near_cache=near_cache,
            near_cache_bytes=near_cache_bytes,
            near_cache_lag=near_cache_lag,
        )
        self._store = store_for(client, self.config.retry_after)
        slow = _slow_failure_settings(client)
        if slow:
            log.warning(
                "the Redis client has %s: a dead or hung Redis stalls a request that long before "
                "the circuit breaker opens; use QueryCache.from_url or give the client "
                "socket_timeout=%s, socket_connect_timeout=%s, retry=None",
                " and ".join(slow),
                DEFAULT_SOCKET_TIMEOUT,
                DEFAULT_SOCKET_TIMEOUT,
            )
        self.client = client
        self._near: NearCache | None = None
        if self.config.near_cache:
            self._near = NearCache(
                sync_client_like(client),
                bumps_channel(self.config.namespace),
                near_ping_channel(self.config.namespace),
                max_entries=self.config.near_cache,
                max_bytes=self.config.near_cache_bytes,
                lag=self.config.near_cache_lag,
            )
        self._stats = Stats()
        self._engines: dict[Engine, EngineWiring] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, asyncio: bool = False, **options: Any) -> QueryCache:
        """A cache on a new client for ``url`` (``redis://``, ``rediss://``, ``unix://``) with
        short timeouts and no retries; ``asyncio=True`` makes a ``redis.asyncio`` client (for
        ``AsyncEngine``\\ s); ``options`` are the constructor's keyword arguments."""
        settings: dict[str, Any] = {
            "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
            "socket_connect_timeout": DEFAULT_SOCKET_TIMEOUT,
            "retry": None,
        }
        if asyncio:
            return cls(redis.asyncio.Redis.from_url(url, **settings), **options)
        return cls(redis.Redis.from_url(url, **settings), **options)

    @property
    def namespace(self) -> str:
        return self.config.namespace

    @property
    def is_async(self) -> bool:
        """True for a cache on a ``redis.asyncio`` client (installed on ``AsyncEngine``\\ s)."""
        return self._store.is_async

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The engines the cache is installed on (for an ``AsyncEngine``, its ``sync_engine``)."""
        with self._lock:
            return tuple(self._engines)

    def install(self, engine: Engine | AsyncEngine, *, database_id: str | None = None) -> None:
        """Track every write on ``engine`` and cache the reads of sessions that ask for it.

        Idempotent. ``database_id`` names the database server in keys; by default it is derived
        from the URL (backend, host, port; never the password). Give it explicitly when processes
        reach one server through different host names. Tables are named with their schema (the
        URL's database for those the SQL leaves unqualified).
        """
        target = self._sync_engine(engine)
        if database_id is not None and (not isinstance(database_id, str) or not database_id):
            raise CacheConfigurationError("database_id must be a non-empty string")
        with self._lock:
            if target in self._engines:
                return
            wiring = EngineWiring(
                target,
                self._store,
                self.config,
                self._stats,
                database_id or server_identity(target.url),
                self._near,
            )
            if self._near is not None and self.config.require_watcher:
                self._near.heartbeats.append(wiring.keys.heartbeat)
            wiring.install()
            self._engines[target] = wiring

    def uninstall(self, engine: Engine | AsyncEngine) -> None:
        """Undo :meth:`install`; a no-op for an engine it was not installed on."""
        target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        with self._lock:
            wiring = self._engines.pop(target, None)
        if wiring is not None:
            wiring.uninstall()

    def invalidate(
        self,
        *tables: str,
        engine: Engine | AsyncEngine | None = None,
        database_id: str | None = None,
    ) -> None:
        """Make every entry that read one of ``tables`` dead (all entries if none are given), for
        ``engine``'s database, for the server ``database_id`` names, or for every engine the cache
        is installed on.

        For writes the cache cannot see: triggers, other applications, manual SQL. With
        ``database_id`` (the identity ``install()`` uses: ``keys.server_identity(url)`` unless
        given explicitly) no engine is needed, and tables are named ``schema.table``. On a cache
        with a ``redis.asyncio`` client, use :meth:`ainvalidate`.
        """
        self._refuse_blocking("invalidate")
        names = frozenset(normalize_table_name(t) for t in tables) or frozenset({ALL_TABLES})
        target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        if database_id is not None:
            unqualified = sorted(t for t in names if t != ALL_TABLES and "." not in t)
            if unqualified:
                raise CacheConfigurationError(
                    f"with database_id, name tables as schema.table; got {unqualified[0]!r}"
                )
            self.server_invalidator(database_id).publish(names)
            return
        with self._lock:
            wirings = [self._engines[target]] if target in self._engines else []
            if target is None:
                wirings = list(self._engines.values())
        if not wirings:
            raise CacheConfigurationError("invalidate() needs an engine the cache is installed on")
        for wiring in wirings:
            wiring.invalidator.publish(names)

    async def ainvalidate(
        self,
        *tables: str,
        engine: Engine | AsyncEngine | None = None,
        database_id: str | None = None,
    ) -> None:
        """:meth:`invalidate` for a cache with a ``redis.asyncio`` client."""
        self._refuse_async("ainvalidate", "invalidate")
        await greenlet_spawn(self.invalidate, *tables, engine=engine, database_id=database_id)

    def server_invalidator(self, database_id: str) -> Invalidator:
        """Bumps tables (``schema.table``) of the server ``database_id`` names, through this
        cache's store and settings, with no engine: for tools such as the binlog watcher."""
        if not isinstance(database_id, str) or not database_id:
            raise CacheConfigurationError("database_id must be a non-empty string")
        return Invalidator.for_server(self._store, self.config, self._stats, database_id)

    def clear(self) -> int:
        """Delete every key of this namespace (never FLUSHDB). Returns how many were deleted.

        Uses SCAN: an operations tool, not something to call per request. On a cache with a
        ``redis.asyncio`` client, use :meth:`aclear`.
        """
        self._refuse_blocking("clear")
        return self._store.delete_matching(_glob_escape(self.config.namespace))

    async def aclear(self) -> int:
        """:meth:`clear` for a cache with a ``redis.asyncio`` client."""
        self._refuse_async("aclear", "clear")
        return await greenlet_spawn(self.clear)

    def close(self) -> None:
        """Stop this cache's background work (the near cache's listener). Optional: it is a
        daemon thread; after it, nothing is served from the near cache."""
        if self._near is not None:
            self._near.close()

    def stats(self) -> dict[str, int]:
        """Counts since start-up: hits, misses, stores, bypasses, invalidations, errors."""
        return self._stats.snapshot()

    # -- checks ---------------------------------------------------------------------------------

    def _sync_engine(self, engine: object) -> Engine:
        """The Engine the events go on (an ``AsyncEngine``'s ``sync_engine``), if the client suits
        its driver; TypeError saying what to use instead."""
        if isinstance(engine, AsyncEngine):
            engine = engine.sync_engine
        if not isinstance(engine, Engine):
            raise TypeError(
                "install() needs a sqlalchemy Engine or AsyncEngine, "
                f"got {type(engine).__qualname__}"
            )
        if engine.dialect.is_async and not self.is_async:
            raise TypeError(
                "an AsyncEngine needs a cache on a redis.asyncio client: "
                "QueryCache(redis.asyncio.Redis(...)) or QueryCache.from_url(url, asyncio=True)"
            )
        if self.is_async and not engine.dialect.is_async:
            raise TypeError(
                "a synchronous Engine needs a cache on a synchronous redis.Redis client "
                "(this one has a redis.asyncio client: install it on an AsyncEngine)"
            )
        return engine

    def _refuse_blocking(self, method: str) -> None:
        """An asyncio cache's sync methods work only inside SQLAlchemy's greenlet (``run_sync``,
        the event hooks), where they do not block the loop."""
        if self.is_async and not _in_greenlet():
            raise TypeError(f"this cache has a redis.asyncio client: use 'await cache.a{method}()'")

    def _refuse_async(self, method: str, instead: str) -> None:
        if not self.is_async:
            raise TypeError(
                f"{method}() is for a cache on a redis.asyncio client; this one is synchronous: "
                f"use cache.{instead}() (it would block the event loop)"
            )


def _in_greenlet() -> bool:
    from sqlalchemy.util.concurrency import in_greenlet

    return in_greenlet()


def _slow_failure_settings(client: RedisClient) -> list[str]:
    """What in the client's settings makes a failing Redis expensive for each request."""
    if isinstance(client, RedisCluster):
        kwargs: dict[str, Any] = getattr(client, "nodes_manager").connection_kwargs  # noqa: B009
    else:
        kwargs = client.connection_pool.connection_kwargs
    slow = []
    timeout = kwargs.get("socket_timeout")
    if timeout is None or float(timeout) > 1:
        slow.append(f"socket_timeout={'unset' if timeout is None else f'{timeout}s'}")
    connect_timeout = kwargs.get("socket_connect_timeout")  # unset: socket_timeout applies
    if connect_timeout is not None and float(connect_timeout) > 1:
        slow.append(f"socket_connect_timeout={connect_timeout}s")
    retry = kwargs.get("retry")
    if retry is not None and retry.get_retries() > 0:  # redis-py retries even a refused connect
        slow.append(f"{retry.get_retries()} retries with backoff")
    return slow


def _glob_escape(namespace: str) -> str:
    """SCAN pattern matching exactly the keys ``{namespace}:...``."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in namespace)
    return "{" + escaped + "}:*"
