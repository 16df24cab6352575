"""Configuration from the environment, with embedded defaults that need no server at all.

``DATABASE_URL`` picks the stack: a synchronous driver (``mysql+mysqldb://``, ``sqlite://``) runs
the API on ``Session``; an asyncio driver (``mysql+asyncmy://``, ``mysql+aiomysql://``,
``sqlite+aiosqlite://``) runs the same API on ``AsyncSession`` with a ``redis.asyncio`` cache.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger("example_app")

DEFAULT_DATABASE = Path(tempfile.gettempdir()) / "sa_redis_cache_demo.db"
_SYNC_DRIVERS = {"asyncmy": "mysqldb", "aiomysql": "mysqldb", "aiosqlite": "pysqlite"}


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or f"sqlite:///{DEFAULT_DATABASE}"


def is_async(url: str) -> bool:
    return bool(make_url(url).get_dialect().is_async)


def sync_url(url: str) -> str:
    """The same database through a synchronous driver (for migrations and seeding)."""
    parsed = make_url(url)
    driver = _SYNC_DRIVERS.get(parsed.get_driver_name())
    if driver is None:
        return url
    return parsed.set(drivername=f"{parsed.get_backend_name()}+{driver}").render_as_string(
        hide_password=False
    )


def make_engine(url: str) -> Engine:
    """A synchronous engine on ``url``'s database, whatever its driver."""
    engine = create_engine(sync_url(url))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _foreign_keys)
    return engine


def make_app_engine(url: str) -> Engine | AsyncEngine:
    """The API's engine: an ``AsyncEngine`` for an asyncio driver."""
    if not is_async(url):
        return make_engine(url)
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _foreign_keys)
    return engine


def _foreign_keys(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # the seed's FK, enforced
    cursor.close()


_EMBEDDED: Any = None


def redis_client(url: str | None, *, asyncio: bool = False) -> redis.Redis | redis.asyncio.Redis:
    """A client for ``url``, or for an in-process Redis emulator shared by the whole process."""
    url = url or os.environ.get("REDIS_URL")
    quick: dict[str, Any] = {
        "socket_timeout": 0.25,
        "socket_connect_timeout": 0.25,
        "retry": None,
    }
    if url:
        client_class = redis.asyncio.Redis if asyncio else redis.Redis
        return client_class.from_url(url, **quick)
    global _EMBEDDED
    import fakeredis

    if _EMBEDDED is None:
        _EMBEDDED = fakeredis.FakeServer()
        log.warning(
            "REDIS_URL is not set: using an in-process Redis emulator (fakeredis); "
            "set REDIS_URL=redis://127.0.0.1:6379/0 to use a real Redis"
        )
    if asyncio:
        return fakeredis.FakeAsyncRedis(server=_EMBEDDED, **quick)
    return fakeredis.FakeRedis(server=_EMBEDDED, **quick)
