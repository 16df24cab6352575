"""The store: the cache's protocol with Redis over one primitive, "send a command, read its reply".

Everything above the store (the read path, invalidation, the watcher, the command line) calls these
methods synchronously. The only difference between a store on ``redis.Redis`` and one on
``redis.asyncio.Redis`` is how :meth:`Store.command` waits for the reply (and how
:meth:`Store.pause` sleeps): the asyncio store awaits it from inside SQLAlchemy's greenlet, where
the cache's event hooks run for an ``AsyncEngine``. So the read path of a sync hit and of an async
hit is the same code down to that one call.

Every Redis failure becomes :class:`RedisUnavailable` and trips the shared circuit breaker; the
callers fall back to the database. The store never retries a failed call (except reloading a
script the server forgot, which is not a failure).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import redis
from redis.exceptions import NoScriptError

from .breaker import CircuitBreaker
from .scripts import BUMP, LOOKUP, RELEASE, STORE, EntryKeys, LookupReply, LuaScript

T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis failed or the circuit breaker is open: the caller falls back to the database."""


class CircuitOpen(RedisUnavailable):
    """Redis was not even asked: it failed recently (no new error to count)."""


def unique_token() -> str:
    """A token no other call, thread or process ever gets: candidate epochs of a new clock,
    writer and lock tokens. Random per process, counted within it (no syscall per token)."""
    return _process_token + str(next(_tokens))


def _new_process_token() -> None:
    global _process_token, _tokens
    _process_token, _tokens = os.urandom(8).hex() + ".", itertools.count()


_process_token, _tokens = "", itertools.count()
_new_process_token()
os.register_at_fork(after_in_child=_new_process_token)  # a forked child counts on its own


class Store:
    """The protocol. Subclasses provide :meth:`command` and :meth:`pause`."""

    is_async: ClassVar[bool] = False
    failures: ClassVar[tuple[type[BaseException], ...]] = (redis.RedisError,)
    """What the client raises when Redis fails (turned into :class:`RedisUnavailable`)."""

    def __init__(self, retry_after: float) -> None:
        self.breaker = CircuitBreaker(retry_after)
        self._skip_replies: bool | None = None
        """May stores be sent with ``CLIENT REPLY SKIP``? Asked of the server once (an ACL may
        forbid it: then a skipped reply would be an error reply left on the connection)."""

    # -- the I/O edge ---------------------------------------------------------------------------

    def command(self, *args: Any) -> Any:
        """One round trip: send ``args`` as one command, return the reply undecoded. Raises the
        client's own errors (callers go through the breaker with :meth:`_call`)."""
        raise NotImplementedError

    def to_the_end(self, work: Callable[[], T]) -> T:
        """Run ``work`` (commands) to its end even if the caller gives up waiting for it: where a
        caller can be cancelled, the work goes on without it. For a commit's bump."""
        return work()

    def pause(self, seconds: float) -> None:
        """Wait (the stampede wait): a sleep, or an awaited one that lets the event loop run."""
        raise NotImplementedError

    def send_unanswered(self, *commands: tuple[Any, ...]) -> None:
        """Write ``commands`` in one go and read nothing: for commands whose replies the server
        was told to skip. Stores without that primitive wait for their replies."""
        raise NotImplementedError

    # -- the protocol ---------------------------------------------------------------------------

    def lookup(
        self,
        keys: EntryKeys,
        *,
        ttl_ms: int,
        snapshot: int | None,
        header: bytes,
        token: str,
        lock_ms: int,
    ) -> LookupReply:
        args = [
            unique_token(), ttl_ms, len(keys.versions), "" if snapshot is None else snapshot,
            header, token, lock_ms, "0" if keys.heartbeat is None else "1",
        ]  # fmt: skip
        all_keys = keys.all() if keys.heartbeat is None else [*keys.all(), keys.heartbeat]
        raw = self._call(LOOKUP, all_keys, args)
        epoch = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        return LookupReply(
            epoch, int(raw[1]), bool(raw[2]), raw[3], bool(raw[4]), bool(raw[5]),
            tuple(raw[6:]), raw[2] == 2,
        )  # fmt: skip

    def clock(self, clock: str) -> int:
        """The current write counter (0 if the clock does not exist yet)."""
        return int(self._guarded(self.command, "HGET", clock, "n") or 0)

    def store(
        self,
        keys: EntryKeys,
        *,
        epoch: str,
        versions: Sequence[int],
        entry: bytes,
        token: str,
        ttl_ms: int,
    ) -> bool | None:
        """Store ``entry`` if nothing moved since the lookup; releases the lock either way.

        Where the server allows it, the store is written with ``CLIENT REPLY SKIP`` and its reply
        never read: a miss then costs one round trip (the lookup), not two. The result is not
        known then (None): the script refuses a store that would be stale, so nothing depends
        on it, and a later command on the same connection is ordered after it.
        """
        args = [epoch, ttl_ms, len(keys.versions), entry, token, *versions]
        if self._skip_replies is None:
            self._skip_replies = self._guarded(self._can_skip_replies)
        if not self._skip_replies:
            return bool(self._call(STORE, keys.all(), args))
        # EVAL, not EVALSHA: a NOSCRIPT error would go unread, and every store with it
        command = ("EVAL", STORE.source, len(keys.all()), *keys.all(), *args)
        self._guarded(self.send_unanswered, ("CLIENT", "REPLY", "SKIP"), command)
        return None

    def _can_skip_replies(self) -> bool:
        if type(self).send_unanswered is Store.send_unanswered:  # this store has no such write
            return False
        try:
            return self.command("CLIENT", "REPLY", "ON") in (b"OK", "OK")
        except redis.ResponseError:  # refused (an ACL, a proxy): wait for every reply
            return False

    def release(self, keys: EntryKeys, token: str) -> None:
        """Give the lock up without storing (the result turned out not to be storable)."""
        self._call(RELEASE, [keys.clock, keys.entry, keys.lock], [token])

    def bump(
        self,
        clock: str,
        versions: Sequence[str],
        writing: Sequence[str],
        *,
        mode: str,
        token: str,
        lease_ms: int,
        ttl_ms: int,
        all_tables: bool,
        channel: str,
    ) -> int:
        keys = [clock, *versions, *writing]
        args = [unique_token(), ttl_ms, len(versions), mode, token, lease_ms]
        args += [unique_token() if all_tables else "", channel]
        # a cancelled commit must still bump: a lost second bump would leave the REPEATABLE READ
        # window open for transactions that outlive the writer's lease
        return int(self._guarded(self.to_the_end, lambda: self._evalsha(BUMP, keys, args)))

    def delete_matching(self, pattern: str) -> int:
        """Delete every key matching ``pattern`` with SCAN + UNLINK (never KEYS, never FLUSHDB).
        An operations tool: never on a request path. Errors are the client's own."""
        deleted, cursor = 0, b"0"
        while True:
            cursor, keys = self.command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            if keys:
                deleted += int(self.command("UNLINK", *keys))
            if int(cursor) == 0:
                return deleted

    # -- plumbing -------------------------------------------------------------------------------

    def _call(self, script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._guarded(self._evalsha, script, keys, args)

    def _evalsha(self, script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return self.command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # the server lost its script cache (restart, SCRIPT FLUSH)
            self.command("SCRIPT", "LOAD", script.source)
            return self.command("EVALSHA", script.sha, len(keys), *keys, *args)

    def _guarded(self, call: Any, *args: Any) -> Any:
        if not self.breaker.allows():
            raise CircuitOpen("circuit open after a recent Redis error")
        try:
            return call(*args)
        except self.failures as exc:
            self.breaker.trip()
            raise RedisUnavailable(str(exc) or type(exc).__name__) from exc
