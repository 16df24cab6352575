"""The Redis side, behind one small interface (:class:`~.base.Store`).

- ``scripts``: the Lua scripts, the single source of the protocol, and their replies' shapes;
- ``base``: the protocol over one primitive (send a command, read its reply), and the errors;
- ``sync``: on ``redis.Redis``; ``aio``: on ``redis.asyncio.Redis``, awaited from SQLAlchemy's
  greenlet; ``breaker``: the circuit breaker they share.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import redis
import redis.asyncio
from redis.cluster import RedisCluster

from ..errors import CacheConfigurationError
from .base import CircuitOpen, RedisUnavailable, Store
from .scripts import EntryKeys, LookupReply

__all__ = ["CircuitOpen", "EntryKeys", "LookupReply", "RedisUnavailable", "Store", "store_for"]


def store_for(client: Any, retry_after: float) -> Store:
    """The store for ``client``; TypeError if it is not a Redis client the cache can use."""
    if isinstance(client, redis.asyncio.Redis):
        if importlib.util.find_spec("greenlet") is None:  # SQLAlchemy's asyncio support runs on it
            raise CacheConfigurationError(
                "an asyncio Redis client needs greenlet, as SQLAlchemy's asyncio support does: "
                "pip install 'sa_redis_cache[asyncio]'"
            )
        from .aio import AsyncStore

        return AsyncStore(client, retry_after)
    if isinstance(client, redis.Redis):
        from .sync import SyncStore

        return SyncStore(client, retry_after)
    if isinstance(client, RedisCluster):
        from .cluster import ClusterStore

        return ClusterStore(client, retry_after)
    raise TypeError(
        "QueryCache needs a redis.Redis, a redis.asyncio.Redis or a redis.cluster.RedisCluster "
        f"client, got {type(client).__qualname__}"
    )
