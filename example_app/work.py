"""A request's database work, written once against the ``Session`` API, run on either stack.

Every endpoint is a plain function of a ``Session``. On a synchronous engine it runs in a worker
thread (as FastAPI runs a sync endpoint); on an ``AsyncEngine`` it runs through
``AsyncSession.run_sync``, on the event loop, where every database and Redis call is awaited.
The cache is the same on both: only the client (``redis.Redis`` or ``redis.asyncio.Redis``) and
the driver differ.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeVar

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from sa_redis_cache import CachingQuery

T = TypeVar("T")


class Work(Protocol):
    async def run(self, work: Callable[[Session], T]) -> T: ...


class ThreadWork:
    def __init__(self, session: Session) -> None:
        self._session = session

    async def run(self, work: Callable[[Session], T]) -> T:
        return await run_in_threadpool(work, self._session)


class AsyncWork:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def run(self, work: Callable[[Session], T]) -> T:
        return await self._session.run_sync(work)


def opener(engine: Engine | AsyncEngine) -> Callable[[], AbstractAsyncContextManager[Work]]:
    """Opens one request's unit of work: a caching session on ``engine``, closed at the end."""
    options = {"redis_cache": True}
    if isinstance(engine, AsyncEngine):
        async_sessions = async_sessionmaker(
            engine, query_cls=CachingQuery, execution_options=options
        )

        @asynccontextmanager
        async def open_async() -> AsyncIterator[Work]:
            async with async_sessions() as session:
                yield AsyncWork(session)

        return open_async

    sessions = sessionmaker(engine, query_cls=CachingQuery, execution_options=options)

    @asynccontextmanager
    async def open_sync() -> AsyncIterator[Work]:
        session = sessions()
        try:
            yield ThreadWork(session)
        finally:
            await run_in_threadpool(session.close)  # its rollback is I/O: not on the loop

    return open_sync
