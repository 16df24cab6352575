"""The store on a ``redis.cluster.RedisCluster``: the client routes each script by its keys'
slot (all of a namespace's keys share the ``{namespace}`` hash tag, so one slot)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from .base import Store


class ClusterStore(Store):
    # redis-py's cluster errors (SlotNotCoveredError, ...) are not all RedisError subclasses
    failures: ClassVar[tuple[type[BaseException], ...]] = (
        redis.RedisError,
        RedisClusterException,
    )

    def __init__(self, client: RedisCluster, retry_after: float) -> None:
        super().__init__(retry_after)
        self.client = client

    def command(self, *args: Any) -> Any:
        return self.client.execute_command(*args)  # type: ignore[no-untyped-call]

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)

    def delete_matching(self, pattern: str) -> int:
        deleted = 0
        for key in self.client.scan_iter(match=pattern, count=1000):  # every master's keys
            deleted += int(self.client.unlink(key))
        return deleted
