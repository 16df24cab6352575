"""The store on a synchronous ``redis.Redis``.

Each command is one packed write and one read on a connection from the client's own pool (the
pattern of redis-py's pipelines), the reply left undecoded. redis-py 8's general command path
(``execute_command``: per-command instrumentation, retry wrappers, response callbacks) costs about
40 us more per call: more than the rest of a hit's own work. It also retries by default; the cache
never does (it falls back to the database instead).
"""

from __future__ import annotations

import time
from typing import Any

import redis

from .base import Store


class SyncStore(Store):
    def __init__(self, client: redis.Redis, retry_after: float) -> None:
        super().__init__(retry_after)
        self.client = client
        self._pool = client.connection_pool

    def command(self, *args: Any) -> Any:
        connection = self._pool.get_connection()
        try:
            connection.send_packed_command(connection.pack_command(*args))  # type: ignore[no-untyped-call]
            # a failed read disconnects the connection: no half-read reply is left on it
            return connection.read_response(disable_decoding=True)
        finally:
            self._pool.release(connection)

    def send_unanswered(self, *commands: tuple[Any, ...]) -> None:
        connection = self._pool.get_connection()
        try:
            connection.send_packed_command(connection.pack_commands(commands))  # type: ignore[no-untyped-call]
        finally:
            self._pool.release(connection)

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)
