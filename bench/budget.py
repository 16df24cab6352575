"""Where a hit's time goes: the request split into its parts, and the round trips it is made of
timed on their own. This is the profile behind every target the benchmark reports as missed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import redis
from sqlalchemy import create_engine, select

from bench.schema import Employee
from sa_redis_cache.store.sync import SyncStore


def breakdown(samples_ms: dict[str, list[float]]) -> dict[str, float]:
    """One query's median request split into parts (ms), from modes timed side by side."""
    median = {mode: statistics.median(values) for mode, values in samples_ms.items()}
    return {
        "SQLAlchemy and the ORM, no I/O": median["memory only"],
        "database (no cache - memory only)": median["no cache"] - median["memory only"],
        "the cache's own Python on a hit": median["hot, lookup from memory"]
        - median["memory only"],
        "the hit's Redis round trip": median["hot"] - median["hot, lookup from memory"],
        "a miss on top of no cache": median["cold"] - median["no cache"],
    }


def single_calls(database_url: str, redis_url: str, pk: int, repeat: int) -> dict[str, float]:
    """Median microseconds of the single calls a request is made of, interleaved."""
    engine = create_engine(database_url)
    compiled = select(Employee).where(Employee.id == pk).compile(engine)
    sql = str(compiled)
    params: Any = compiled.construct_params()
    if compiled.positiontup is not None:
        params = tuple(params[name] for name in compiled.positiontup)
    raw = engine.raw_connection()
    dbapi = raw.driver_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    client = redis.Redis.from_url(redis_url)
    sender = SyncStore(client, retry_after=5)
    client.set("bench-budget:get", b"x" * 140, px=600_000)

    def select_pk() -> None:
        cursor.execute(sql, params)
        cursor.fetchall()

    calls: dict[str, Callable[[], Any]] = {
        "database: SELECT by primary key (DBAPI)": select_pk,
        "database: ROLLBACK (DBAPI; every request sends two, cached or not)": dbapi.rollback,
        "Redis: GET through redis-py's command path": lambda: client.get("bench-budget:get"),
        "Redis: GET as one packed command (how the cache calls)": lambda: sender.command(
            "GET", "bench-budget:get"
        ),
    }
    samples: dict[str, list[int]] = {name: [] for name in calls}
    try:
        for _ in range(repeat):
            for name, call in calls.items():
                started = time.perf_counter_ns()
                call()
                samples[name].append(time.perf_counter_ns() - started)
    finally:
        cursor.close()
        raw.close()
        engine.dispose()
        client.delete("bench-budget:get")
    return {name: statistics.median(values) / 1000 for name, values in samples.items()}
