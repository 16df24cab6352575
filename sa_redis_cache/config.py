"""Validated options of a :class:`~sa_redis_cache.QueryCache`.

Everything is checked once, at construction, so that a typo fails at start-up and not on the
first request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import CacheConfigurationError

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    namespace: str
    ttl: int
    """Seconds an entry lives at most (statements may ask for their own ``redis_cache_ttl``)."""
    uncached_tables: frozenset[str]
    max_entry_bytes: int
    """Results that serialize to more than this are served but not stored."""
    write_lease: float
    """Seconds a table stays marked "being written" if a writer dies between commit and bump."""
    retry_after: float
    """Seconds the circuit breaker keeps Redis out of the request path after an error."""
    stampede_wait: float
    """Seconds a miss waits for another process already computing the same entry (0: never)."""
    cache_by_default: bool = False
    """Cache the reads of sessions and statements that say nothing about ``redis_cache``."""
    require_watcher: bool = False
    near_cache: int = 0
    """Entries kept decoded in process memory, served with no round trip (0: no near cache)."""
    near_cache_bytes: int = 64 << 20
    near_cache_lag: float = 0.1
    """Seconds: a near-cache read may miss a commit that returned less than this long before."""
    """Use the cache only while a binlog watcher's heartbeat for the engine's server is alive."""

    @classmethod
    def build(
        cls,
        *,
        namespace: str,
        ttl: int,
        uncached_tables: Iterable[str],
        max_entry_bytes: int,
        write_lease: float,
        retry_after: float,
        stampede_wait: float,
        cache_by_default: bool = False,
        require_watcher: bool = False,
        near_cache: int = 0,
        near_cache_bytes: int = 64 << 20,
        near_cache_lag: float = 0.1,
    ) -> CacheConfig:
        if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
            raise CacheConfigurationError(
                f"namespace must be 1-64 characters of letters, digits, '_', '.' or '-'; "
                f"got {namespace!r}"
            )
        ttl = _positive_int("ttl", ttl)
        max_entry_bytes = _positive_int("max_entry_bytes", max_entry_bytes)
        if isinstance(uncached_tables, str):
            raise CacheConfigurationError(
                "uncached_tables must be a collection of table names, not a single string"
            )
        tables = frozenset(normalize_table_name(t) for t in uncached_tables)
        return cls(
            namespace=namespace,
            ttl=ttl,
            uncached_tables=tables,
            max_entry_bytes=max_entry_bytes,
            write_lease=_positive_number("write_lease", write_lease),
            retry_after=_positive_number("retry_after", retry_after),
            stampede_wait=_non_negative_number("stampede_wait", stampede_wait),
            cache_by_default=_flag("cache_by_default", cache_by_default),
            require_watcher=_flag("require_watcher", require_watcher),
            near_cache=_non_negative_int("near_cache", near_cache),
            near_cache_bytes=_positive_int("near_cache_bytes", near_cache_bytes),
            near_cache_lag=_positive_number("near_cache_lag", near_cache_lag),
        )


def normalize_table_name(name: str) -> str:
    """The one spelling of a table name used in keys: unquoted, lower case.

    Lower case because MySQL may treat ``Employee`` and ``employee`` as one table; folding can only
    make two tables share a version (extra invalidation), never split one.
    """
    if not isinstance(name, str) or not name.strip():
        raise CacheConfigurationError(f"table names must be non-empty strings; got {name!r}")
    return name.strip().strip('`"[]').lower()


def validate_ttl(name: str, value: object) -> int:
    return _positive_int(name, value)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CacheConfigurationError(f"{name} must be a positive integer; got {value!r}")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise CacheConfigurationError(f"{name} must be True or False; got {value!r}")
    return value


def _non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CacheConfigurationError(f"{name} must be an integer >= 0; got {value!r}")
    return value


def _non_negative_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise CacheConfigurationError(f"{name} must be a number of seconds >= 0; got {value!r}")
    return float(value)


def _positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise CacheConfigurationError(f"{name} must be a positive number of seconds; got {value!r}")
    return float(value)
