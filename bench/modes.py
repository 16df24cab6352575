"""The modes compared side by side, each on an engine of its own.

- ``no cache``: plain SQLAlchemy.
- ``cold``: sa_redis_cache on a miss (the entry is deleted before each request, untimed), store
  included.
- ``hot``: sa_redis_cache on a hit.
- ``floor``: the same ORM query fed from rows held in process memory, plus one Redis GET of bytes
  as long as the cached entry, sent as the cache sends its scripts (one packed command on a
  pooled connection): the best any Redis-backed cache can do.
- ``hot, lookup from memory`` and ``memory only``: probes that split a hit's time into its parts
  (SQLAlchemy and the ORM; the cache's own Python; its Redis round trip).
- ``dogpile``: the pattern of SQLAlchemy's ``examples/dogpile_caching`` as a peer: a pickled
  ``FrozenResult`` per ORM statement, merged into the session on a hit (no invalidation).
- ``async ...``: no cache, cold, hot and floor again on an ``AsyncEngine`` (asyncmy), each request
  an ``AsyncSession`` running the same query through ``run_sync``, the cache on a
  ``redis.asyncio`` client and the floor's GET awaited the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis
import redis.asyncio
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker
from sqlalchemy.orm.loading import merge_frozen_result

from sa_redis_cache import QueryCache
from sa_redis_cache.api import DEFAULT_SOCKET_TIMEOUT
from sa_redis_cache.cursor import BufferedCursor
from sa_redis_cache.round_trips import RedisCommandLog
from sa_redis_cache.store.aio import AsyncStore
from sa_redis_cache.store.base import Store
from sa_redis_cache.store.sync import SyncStore

NAMESPACE = "bench"
Query = Callable[[Session], Any]


@dataclass
class Mode:
    name: str
    sessions: sessionmaker[Session] | None
    before_each: Callable[[], None] = lambda: None
    closers: list[Callable[[], None]] = field(default_factory=list)
    run_async: Callable[[Query], None] | None = None
    """For an async mode: runs one whole request (an AsyncSession) on the bench's event loop."""

    def run(self, query: Query) -> None:
        """One whole request: a fresh session, the query, the session closed."""
        if self.run_async is not None:
            self.run_async(query)
            return
        assert self.sessions is not None
        with self.sessions() as session:
            query(session)

    def close(self) -> None:
        for close in self.closers:
            close()


def drop_entries(client: redis.Redis, namespace: str = NAMESPACE) -> None:
    """Delete the cached entries (not the versions): the next request is an ordinary miss."""
    keys = list(client.scan_iter(match="{" + namespace + "}:e:*", count=1000))
    if keys:
        client.unlink(*keys)


def no_cache(url: str) -> Mode:
    engine = create_engine(url)
    return Mode("no cache", sessionmaker(engine), closers=[engine.dispose])


def with_cache(url: str, redis_url: str, sent: RedisCommandLog) -> tuple[Mode, Mode, QueryCache]:
    """The cache as ``QueryCache.from_url`` makes it, its round trips logged in ``sent``."""
    engine = create_engine(url)
    client = sent.client(
        redis_url,
        socket_timeout=DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout=DEFAULT_SOCKET_TIMEOUT,
        retry=None,
    )
    cache = QueryCache(client, namespace=NAMESPACE)
    cache.install(engine)
    sessions = sessionmaker(engine, execution_options={"redis_cache": True})
    cold = Mode("cold", sessions, before_each=lambda: drop_entries(client))
    hot = Mode("hot", sessions, closers=[lambda: cache.uninstall(engine), engine.dispose])
    return cold, hot, cache


def hot_lookup_in_memory(url: str, redis_url: str) -> Mode:
    """``hot`` with each statement's lookup reply replayed from memory once it holds the entry:
    the hit path minus its Redis round trip (for the breakdown of where a hit's time goes)."""
    engine = create_engine(url)
    cache = QueryCache.from_url(redis_url, namespace=f"{NAMESPACE}-replay")
    cache.install(engine)
    store = cache._store  # no public seam for this, nor should there be: a benchmark-only probe
    real_lookup = store.lookup
    replies: dict[str, Any] = {}

    def replay(keys: Any, **options: Any) -> Any:
        reply = replies.get(keys.entry)
        if reply is None:
            reply = real_lookup(keys, **options)
            if reply.payload is not None:
                replies[keys.entry] = reply
        return reply

    store.lookup = replay  # type: ignore[method-assign]
    sessions = sessionmaker(engine, execution_options={"redis_cache": True})
    closers = [lambda: cache.uninstall(engine), cache.clear, engine.dispose]
    return Mode("hot, lookup from memory", sessions, closers=closers)


class _MemoryRows:
    """Serves each statement's rows from memory after one real execution, with one Redis GET
    (none without a client) sent through ``sender`` (the cache's own sync or asyncio store)."""

    def __init__(
        self, engine: Engine, client: redis.Redis | None, sender: Store | None = None
    ) -> None:
        self._client = client
        if sender is None and client is not None:
            sender = SyncStore(client, retry_after=5)
        self._sender = sender
        self._rows: dict[tuple[str, str], tuple[str, Any, Any]] = {}
        event.listen(engine, "do_execute", self._execute)
        event.listen(engine, "after_cursor_execute", self._capture)

    def _execute(self, cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        held = self._rows.get((statement, repr(parameters)))
        if held is None:
            return False
        key, description, rows = held
        if self._sender is not None:
            self._sender.command("GET", key)  # sent exactly as the cache sends its scripts
        context.cursor = BufferedCursor(description, rows)
        return True

    def _capture(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if context.cursor.description is None or isinstance(context.cursor, BufferedCursor):
            return
        description, rows = context.cursor.description, context.cursor.fetchall()
        context.cursor = BufferedCursor(description, rows)
        key = f"bench-floor:{hashlib.blake2b(statement.encode()).hexdigest()}:{len(self._rows)}"
        if self._client is not None:
            payload = msgpack.packb([description, rows], default=str)
            self._client.set(key, b"x" * (len(payload) + 80), px=3_600_000)  # as an entry
        self._rows[(statement, repr(parameters))] = (key, description, rows)


def floor(url: str, redis_url: str) -> Mode:
    engine = create_engine(url)
    client = redis.Redis.from_url(redis_url)
    _MemoryRows(engine, client)
    return Mode("floor", sessionmaker(engine), closers=[engine.dispose])


def memory_only(url: str) -> Mode:
    """The floor without its GET: SQLAlchemy and the ORM on rows in memory, no I/O but the
    connection's own (the two ROLLBACKs every request sends, cached or not)."""
    engine = create_engine(url)
    _MemoryRows(engine, None)
    return Mode("memory only", sessionmaker(engine), closers=[engine.dispose])


def dogpile_peer(url: str, redis_url: str) -> Mode:
    engine = create_engine(url)
    client = redis.Redis.from_url(redis_url)
    compiled_cache: dict[Any, str] = {}
    sessions = sessionmaker(engine)

    @event.listens_for(sessions, "do_orm_execute")
    def _from_cache(state: ORMExecuteState) -> Any:
        if not state.is_select:
            return None
        statement = state.statement
        cache_key = statement._generate_cache_key()
        assert cache_key is not None
        text = cache_key.to_offline_string(compiled_cache, statement, state.parameters or {})
        key = "bench-dogpile:" + hashlib.md5(text.encode()).hexdigest()
        # the bench's own throwaway Redis holds what it wrote just before: the peer's pickle
        cached = client.get(key)
        if cached is None:
            frozen = state.invoke_statement().freeze()
            client.set(key, pickle.dumps(frozen), px=3_600_000)
        else:
            frozen = pickle.loads(cached)
        return merge_frozen_result(state.session, statement, frozen, load=False)()

    return Mode("dogpile", sessions, closers=[engine.dispose])


# -- the async stack ----------------------------------------------------------------------------


def async_modes(
    url: str, redis_url: str, loop: asyncio.AbstractEventLoop
) -> tuple[list[Mode], QueryCache]:
    """``async no cache``, ``async cold``, ``async hot`` and ``async floor``, on ``loop``."""
    async_url = make_url(url).set(drivername="mysql+asyncmy")
    quick: dict[str, Any] = {
        "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
        "socket_connect_timeout": DEFAULT_SOCKET_TIMEOUT,
        "retry": None,
    }
    namespace = f"{NAMESPACE}-async"
    plain, cached, floor_engine = (create_async_engine(async_url) for _ in range(3))
    cache = QueryCache(redis.asyncio.Redis.from_url(redis_url, **quick), namespace=namespace)
    cache.install(cached)
    inspector = redis.Redis.from_url(redis_url)
    floor_client = redis.asyncio.Redis.from_url(redis_url, **quick)
    _MemoryRows(floor_engine.sync_engine, inspector, AsyncStore(floor_client, retry_after=5))
    caching = async_sessionmaker(cached, execution_options={"redis_cache": True})

    def runner(sessions: async_sessionmaker[Any]) -> Callable[[Query], None]:
        async def request(query: Query) -> None:
            async with sessions() as session:
                await session.run_sync(query)

        return lambda query: loop.run_until_complete(request(query))

    def disposer(engine: AsyncEngine) -> Callable[[], None]:
        return lambda: loop.run_until_complete(engine.dispose())

    all_modes = [
        Mode("async no cache", None, closers=[disposer(plain)],
             run_async=runner(async_sessionmaker(plain))),
        Mode("async cold", None, before_each=lambda: drop_entries(inspector, namespace),
             run_async=runner(caching)),
        Mode("async hot", None, closers=[disposer(cached)], run_async=runner(caching)),
        Mode("async floor", None, closers=[disposer(floor_engine)],
             run_async=runner(async_sessionmaker(floor_engine))),
    ]  # fmt: skip
    return all_modes, cache
