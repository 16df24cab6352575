"""Counting the round trips a Redis client makes, for tests and benchmarks.

The cache sends its scripts straight down a pooled connection (see store/sync.py), so wrapping
``Redis.execute_command`` would miss them. The log sits one level lower: every packed command a
connection sends is one round trip (a pipeline's batch counts once, under its first command), and
so is a connection attempt that fails (logged as ``(connect)``); a write after ``CLIENT REPLY SKIP``
is logged with :data:`NO_REPLY` in front, as it waits for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio


class RedisCommandLog:
    """The names of the commands sent by the clients made with :meth:`client` (or
    :meth:`async_client`), in order."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def client(self, url: str, **options: Any) -> redis.Redis:
        """A ``redis.Redis`` for ``url`` whose round trips land in :attr:`commands`."""
        log = self.commands

        class RecordingConnection(redis.Connection):
            def connect(self) -> None:
                try:
                    super().connect()  # type: ignore[no-untyped-call]
                except BaseException:
                    log.append("(connect)")
                    raise

            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                log.append(_command_name(command))
                super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

        return redis.Redis.from_url(url, connection_class=RecordingConnection, **options)

    def async_client(self, url: str, **options: Any) -> redis.asyncio.Redis:
        """The same for ``redis.asyncio.Redis``."""
        log = self.commands

        class RecordingConnection(redis.asyncio.Connection):
            async def connect(self) -> None:
                try:
                    await super().connect()  # type: ignore[no-untyped-call]
                except BaseException:
                    log.append("(connect)")
                    raise

            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                log.append(_command_name(command))
                await super().send_packed_command(command, check_health)

        return redis.asyncio.Redis.from_url(url, connection_class=RecordingConnection, **options)

    def clear(self) -> None:
        self.commands.clear()


NO_REPLY = "(no reply) "
"""Prefix of a logged write whose reply the server was told to skip: not a round trip."""
_SKIP = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$4\r\nSKIP\r\n"


def round_trips(commands: Iterable[str]) -> int:
    """How many of the logged commands waited for a reply."""
    return sum(not command.startswith(NO_REPLY) for command in commands)


def _command_name(packed: bytes | str | Iterable[bytes]) -> str:
    """``EVALSHA`` from ``*5\\r\\n$7\\r\\nEVALSHA\\r\\n...`` (RESP, possibly in chunks);
    ``(no reply) EVAL`` for a command sent after ``CLIENT REPLY SKIP``."""
    chunks = [packed] if isinstance(packed, bytes | str) else list(packed)
    data = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks[:2])
    prefix = ""
    if data.startswith(_SKIP):
        prefix, data = NO_REPLY, data[len(_SKIP) :]
    parts = data.split(b"\r\n", 3)
    return prefix + parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?"
