"""sa_redis_cache: a table-invalidated Redis query cache for SQLAlchemy 2.x ORM applications.

Where things live:

- ``api``: :class:`QueryCache`, what users call.
- ``wiring``: the SQLAlchemy events, connected in one place.
- ``tables``: table detection (which tables a SQL statement reads or writes).
- ``write_tracking``: what a transaction wrote, per savepoint level, and its snapshot clock.
- ``invalidation``: moving table versions at commit; ``cascades``: foreign-key cascades.
- ``reads``: the read path (bypass rules, hit, miss and store).
- ``keys``: key building; ``serialization``: the entry codec; ``cursor``: the cursor that serves
  cached rows.
- ``store``: the Redis side behind one interface: the Lua scripts, a sync and an asyncio store,
  the circuit breaker.
- ``failsafe``: what happens when the cache's own code fails (nothing reaches the application).
"""

from .api import QueryCache
from .errors import CacheConfigurationError
from .query import CachingQuery
from .stats import record

__all__ = ["CacheConfigurationError", "CachingQuery", "QueryCache", "record"]
