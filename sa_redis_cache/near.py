"""The near cache (opt-in): entries kept decoded in this process, served with no Redis round trip.

What it trades, precisely: a read served from the near cache may miss a commit that returned less
than ``near_cache_lag`` seconds before the read started, never an older one. Strict reads (the
default, and every read while the near cache cannot prove its lag) miss none.

Why the bound holds:

- Every bump publishes its version keys on the namespace's channel from inside the bump script, so
  a commit's publication happens before its ``commit()`` returns (store/scripts.py, BUMP).
- Redis sends a subscriber its messages in the order the publishing commands ran, whatever their
  channels. A listener thread applies them in that order.
- The listener sends itself a ping, on a channel of its own, every quarter of the lag. When a ping
  sent at local time ``s`` comes back, every bump that ran before the ping was published has been
  applied; a commit that returned before ``s`` (in any process) ran its bump before that. So entries
  may be served until ``s + lag``. If pings stop coming back (the connection broke, Redis froze,
  this process stalls), the lease runs out within the lag and reads go back to the strict path.
- After a (re)subscription every entry is dropped: what was published while nobody listened is
  unknown.

Two races are closed by what the messages carry. A bump that arrives after a lookup fetched an
entry but before the entry is inserted: each version key remembers the highest counter published
for it, and an entry computed against an older version is refused. A reconnection between the two:
each full clear starts a new generation, and an entry whose lookup began in an older one is refused.

Entries holding mutable values (a MySQL ``SET`` comes back as a Python ``set``) are not kept: two
requests would share one object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

log = logging.getLogger("sa_redis_cache")

_SUBSCRIBE_TIMEOUT = 2.0
_LONGEST_BACKOFF = 2.0


@dataclass(slots=True)
class NearEntry:
    description: Any
    rows: Any
    epoch: str
    versions: tuple[int, ...]
    version_keys: Sequence[str]
    size: int


class NearCache:
    """The entries, the bump listener that keeps them honest, and the lease that says so."""

    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        channel: str,
        ping_channel: str,
        *,
        max_entries: int,
        max_bytes: int,
        lag: float,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._ping_channel = ping_channel
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._lag = lag
        self.heartbeats: list[str] = []
        """Binlog watchers' heartbeats (``require_watcher``): no ping while one is missing."""
        self._entries: OrderedDict[str, NearEntry] = OrderedDict()
        self._by_version_key: dict[str, set[str]] = {}
        self._latest: dict[str, int] = {}
        """version key -> the highest counter published for it in the current epoch"""
        self._epoch: str | None = None
        self._bytes = 0
        self.generation = 0
        """Bumped by every full clear; an entry looked up in an older generation is refused."""
        self._valid_until = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the read path's side (cheap, no I/O) ----------------------------------------------------

    def get(self, key: str) -> NearEntry | None:
        """The entry, if the lease is alive and it is held; starts the listener on first use."""
        if time.monotonic() >= self._valid_until:
            if self._thread is None:
                self.start()
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: NearEntry, generation: int) -> None:
        """Keep ``entry`` unless something newer than it has been published since its lookup."""
        if entry.size > self._max_bytes or _holds_mutable_values(entry.rows):
            return
        with self._lock:
            if generation != self.generation or entry.epoch != (self._epoch or entry.epoch):
                return
            latest = self._latest
            for version_key, version in zip(entry.version_keys, entry.versions, strict=True):
                if latest.get(version_key, -1) > version:
                    return  # a bump of one of its tables already arrived
            self._drop(key)
            self._entries[key] = entry
            self._bytes += entry.size
            for version_key in entry.version_keys:
                self._by_version_key.setdefault(version_key, set()).add(key)
            while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                self._drop(next(iter(self._entries)))

    def bumped_here(self, version_keys: Sequence[str], counter: int, every: bool) -> None:
        """This process's own bump, applied before its ``commit()`` returns, without waiting for
        the message: a process reads its own writes from the next statement on."""
        with self._lock:
            if every:
                self._drop_everything()
                return
            for version_key in version_keys:
                if self._latest.get(version_key, -1) < counter:
                    self._latest[version_key] = counter
                for key in self._by_version_key.pop(version_key, ()):
                    self._drop(key)

    def __len__(self) -> int:
        return len(self._entries)

    # -- the listener ------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._listen, name="sa_redis_cache near cache", daemon=True
            )
        self._thread.start()

    def close(self) -> None:
        """Stop the listener; from now on nothing is served from memory."""
        self._stop.set()
        self._valid_until = 0.0
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _listen(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            client = pubsub = None
            try:
                client = self._connect()
                pubsub = client.pubsub()  # type: ignore[no-untyped-call]
                pubsub.subscribe(self._channel, self._ping_channel)
                self._await_subscriptions(pubsub)
                with self._lock:
                    self._clear()  # what was published while nobody listened is unknown
                backoff = 0.05
                self._follow(client, pubsub)
            except Exception as exc:  # any failure: serve nothing from memory, start over
                self._valid_until = 0.0
                with self._lock:
                    self._clear()
                if not self._stop.is_set():
                    log.warning("near cache: the bump listener stopped (%s); reconnecting", exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, _LONGEST_BACKOFF)
            finally:
                if pubsub is not None:
                    pubsub.close()
                if client is not None:
                    client.close()

    def _await_subscriptions(self, pubsub: Any) -> None:
        deadline = time.monotonic() + _SUBSCRIBE_TIMEOUT
        confirmed = 0
        while confirmed < 2:
            message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is not None and message["type"] == "subscribe":
                confirmed += 1
            elif message is None and time.monotonic() >= deadline:
                raise TimeoutError("no subscription confirmation from Redis")

    def _follow(self, client: redis.Redis, pubsub: Any) -> None:
        interval = self._lag / 4
        next_ping = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_ping:
                next_ping = now + interval
                if not self.heartbeats or client.exists(*self.heartbeats) == len(self.heartbeats):
                    client.publish(self._ping_channel, repr(now))
            message = pubsub.get_message(timeout=max(0.0, next_ping - time.monotonic()))
            while message is not None:
                self._handle(message)
                message = pubsub.get_message(timeout=0)

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] != "message":
            return
        channel, data = message["channel"], message["data"]
        if isinstance(channel, bytes):
            channel = channel.decode()
        text = data.decode() if isinstance(data, bytes) else str(data)
        if channel == self._ping_channel:
            # every bump that ran before this ping was published has been applied
            self._valid_until = max(self._valid_until, float(text) + self._lag)
            return
        self._apply(text)

    def _apply(self, data: str) -> None:
        epoch, counter, every, *version_keys = data.split("\n")
        with self._lock:
            if every == "1" or epoch != (self._epoch or epoch):
                self._drop_everything()
                self._latest.clear()  # counters of another epoch mean nothing
                self._epoch = epoch
                return
            self._epoch = epoch
            value = int(counter)
            for version_key in version_keys:
                if self._latest.get(version_key, -1) < value:
                    self._latest[version_key] = value
                for key in self._by_version_key.pop(version_key, ()):
                    self._drop(key)

    # -- bookkeeping (under the lock) ----------------------------------------------------------

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= entry.size
        for version_key in entry.version_keys:
            keys = self._by_version_key.get(version_key)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_version_key[version_key]

    def _drop_everything(self) -> None:
        self._entries.clear()
        self._by_version_key.clear()
        self._bytes = 0

    def _clear(self) -> None:
        self._drop_everything()
        self.generation += 1


def _holds_mutable_values(rows: Any) -> bool:
    return any(type(value) is set for row in rows for value in row)


def sync_client_like(client: Any) -> Callable[[], redis.Redis]:
    """A factory of plain sync clients for the server ``client`` talks to (the listener runs in
    a thread of its own, even for a cache on a ``redis.asyncio`` client)."""
    pool = client.connection_pool
    settings = {
        key: value
        for key, value in pool.connection_kwargs.items()
        if key
        in (
            "host", "port", "db", "username", "password", "path", "ssl_keyfile",
            "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data", "ssl_check_hostname",
            "client_name",
        )
    }  # fmt: skip
    unix = "path" in settings
    ssl = any(key.startswith("ssl_") for key in settings)
    connection_class: type[redis.Connection] | type[redis.UnixDomainSocketConnection]
    if unix:
        connection_class = redis.UnixDomainSocketConnection
    elif ssl:
        connection_class = redis.SSLConnection
    else:
        connection_class = redis.Connection

    def connect() -> redis.Redis:
        return redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=connection_class,
                socket_timeout=5,
                socket_connect_timeout=1,
                retry=None,
                **settings,
            )
        )

    return connect
