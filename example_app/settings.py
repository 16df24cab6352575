"""Configuration from the environment, with embedded defaults that need no server at all."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, create_engine, event

log = logging.getLogger("example_app")

DEFAULT_DATABASE = Path(tempfile.gettempdir()) / "sa_redis_cache_demo.db"


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or f"sqlite:///{DEFAULT_DATABASE}"


def make_engine(url: str) -> Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _foreign_keys(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.execute("PRAGMA foreign_keys=ON")  # the seed's FK, enforced

    return engine


_EMBEDDED: Any = None


def redis_client(url: str | None) -> redis.Redis:
    """A client for ``url``, or for an in-process Redis emulator shared by the whole process."""
    url = url or os.environ.get("REDIS_URL")
    if url:
        return redis.Redis.from_url(
            url, socket_timeout=0.25, socket_connect_timeout=0.25, retry=None
        )
    global _EMBEDDED
    import fakeredis

    if _EMBEDDED is None:
        _EMBEDDED = fakeredis.FakeServer()
        log.warning(
            "REDIS_URL is not set: using an in-process Redis emulator (fakeredis); "
            "set REDIS_URL=redis://127.0.0.1:6379/0 to use a real Redis"
        )
    return fakeredis.FakeRedis(
        server=_EMBEDDED, socket_timeout=0.25, socket_connect_timeout=0.25, retry=None
    )
