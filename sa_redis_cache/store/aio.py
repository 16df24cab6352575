"""The store on ``redis.asyncio.Redis``, for engines made with ``create_async_engine``.

SQLAlchemy runs an ``AsyncSession``'s work, the cache's event hooks included, as synchronous code
inside a greenlet on the event loop's thread. From there :func:`sqlalchemy.util.await_` hands a
coroutine to the loop and resumes the hook with its result: the hook waits, the loop does not.
So this store is the sync one's twin at the single point of I/O, and nothing else in the cache
knows it is async.

Cancellation (``asyncio.CancelledError``, ``asyncio.timeout``) passes through untouched: it belongs
to the application. redis-py's asyncio connection drops itself when a send or a read is
interrupted, so a cancelled request never leaves a half-read reply on a pooled connection. A
lookup or a store may be abandoned (the entry is only a copy); a commit's bump may not, so it runs
shielded and completes on the loop even when the task that committed is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio
from sqlalchemy.util import await_, greenlet_spawn

from .base import Store, T

log = logging.getLogger("sa_redis_cache")


class AsyncStore(Store):
    is_async = True

    def __init__(self, client: redis.asyncio.Redis, retry_after: float) -> None:
        super().__init__(retry_after)
        self.client = client
        self._pool = client.connection_pool

    def command(self, *args: Any) -> Any:
        return await_(self._command(args))

    def to_the_end(self, work: Callable[[], T]) -> T:
        # a task of its own, shielded: if the caller's task is cancelled, the work still completes
        finishing = asyncio.ensure_future(greenlet_spawn(work))
        finishing.add_done_callback(_report_if_abandoned)
        return await_(asyncio.shield(finishing))

    async def _command(self, args: tuple[Any, ...]) -> Any:
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(connection.pack_command(*args))
            return await connection.read_response(disable_decoding=True)
        finally:
            await self._pool.release(connection)

    def send_unanswered(self, *commands: tuple[Any, ...]) -> None:
        await_(self._send_unanswered(commands))

    async def _send_unanswered(self, commands: tuple[tuple[Any, ...], ...]) -> None:
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
        finally:
            await self._pool.release(connection)

    def pause(self, seconds: float) -> None:
        await_(asyncio.sleep(seconds))


def _report_if_abandoned(finished: asyncio.Future[Any]) -> None:
    """A shielded command whose caller was cancelled: nobody else will see how it ended."""
    if not finished.cancelled() and (error := finished.exception()) is not None:
        log.warning("a bump whose commit was cancelled did not reach Redis: %s", error)
