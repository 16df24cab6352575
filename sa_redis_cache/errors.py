"""Exception types raised by sa_redis_cache.

Runtime trouble with Redis or with a cache entry never raises into the application (it is logged,
counted and served from the database); only misuse of the API does, and it does so at once.
"""

from __future__ import annotations


class CacheConfigurationError(ValueError):
    """An option given to :class:`~sa_redis_cache.QueryCache` or ``install()`` is invalid."""


class CorruptEntryError(Exception):
    """A cache entry could not be decoded or does not belong where it was found.

    Internal: the read path turns it into a logged, counted miss.
    """
