"""The legacy ``Query`` API: ``session.query(...).cache()`` and ``.no_cache()``."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.orm import Query

from .config import validate_ttl

_T = TypeVar("_T", bound=Any)


class CachingQuery(Query[_T]):
    """Use as ``sessionmaker(..., query_cls=CachingQuery)``."""

    def cache(self, ttl: int | None = None) -> CachingQuery[_T]:
        """Serve this query from the cache, optionally with its own TTL in seconds."""
        if ttl is None:
            return self.execution_options(redis_cache=True)
        return self.execution_options(redis_cache=True, redis_cache_ttl=validate_ttl("ttl", ttl))

    def no_cache(self) -> CachingQuery[_T]:
        """Always read this query from the database."""
        return self.execution_options(redis_cache=False)
