"""A statement the cache cannot build a key for is left to the database and its driver: whatever
error the application sees is the driver's, never one raised from the cache's hooks.

Python strings may hold lone surrogates (``"\\ud800"``: JSON can spell them), which no encoding
can carry. In a bound parameter the cache already bypasses the statement; in the SQL text itself
the key builder (``keys.py``, ``sql.encode()``) raised UnicodeEncodeError out of ``do_execute``.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

import sa_redis_cache
from sa_redis_cache import QueryCache
from tests.models import Department

LIBRARY = Path(sa_redis_cache.__file__).resolve().parent


@pytest.mark.parametrize(
    ("sql", "parameters"),
    [
        pytest.param("SELECT 'a\ud800' AS t", {}, id="in the SQL text"),
        pytest.param("SELECT :t AS t", {"t": "a\ud800"}, id="in a bound parameter"),
    ],
)
@pytest.mark.usefixtures("seeded")
def test_a_lone_surrogate_is_left_to_the_driver(
    cached: sessionmaker[Session], query_cache: QueryCache, sql: str, parameters: dict[str, Any]
) -> None:
    with cached() as session, pytest.raises(UnicodeEncodeError) as raised:
        session.execute(text(sql), parameters).all()
    cache_frames = [
        f"{frame.filename}:{frame.lineno}"
        for frame in traceback.extract_tb(raised.tb)
        if Path(frame.filename).resolve().is_relative_to(LIBRARY)
    ]
    assert cache_frames == [], "the error was raised from the cache's hooks"
    with cached() as session:  # and the cache goes on serving
        session.scalars(select(Department)).all()
        session.scalars(select(Department)).all()
    assert query_cache.stats()["hits"] == 1
