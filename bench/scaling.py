"""How the cache scales: hot latency against the number of entries and of tables in Redis, commit
latency against the number of tables written, throughput against the number of processes."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert
from sqlalchemy.orm import Session, sessionmaker

from bench import modes
from sa_redis_cache import QueryCache


def _median_ms(mode: modes.Mode, query: Callable[[Session], Any], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        with mode.sessions() as session:
            query(session)
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return statistics.median(samples)


def _fill(client: redis.Redis, prefix: str, start: int, stop: int, value: bytes) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(start, stop):
        pipe.set(f"{prefix}{i}", value, px=3_600_000)
        if i % 10_000 == 0:
            pipe.execute()
    pipe.execute()


def _hot_while_filling(
    client: redis.Redis,
    hot: modes.Mode,
    query: Any,
    prefix: str,
    value: bytes,
    counts: list[int],
    repeat: int,
) -> dict[int, float]:
    """Hot latency after filling Redis with ``count`` keys of ``prefix``, for growing counts."""
    result: dict[int, float] = {}
    filled = 0
    for count in counts:
        _fill(client, prefix, filled, count, value)
        filled = count
        result[count] = _median_ms(hot, query, repeat)
    return result


def commits(
    url: str, redis_url: str, counts: list[int], repeat: int
) -> dict[int, tuple[float, float]]:
    """Median transaction time writing one row to each of N tables: (with cache, without)."""
    metadata = MetaData()
    written = [
        Table(
            f"bench_w{i}", metadata, Column("id", Integer, primary_key=True), Column("n", Integer)
        )
        for i in range(max(counts))
    ]
    plain = create_engine(url)
    metadata.drop_all(plain)
    metadata.create_all(plain)
    cached = create_engine(url)
    cache = QueryCache.from_url(redis_url, namespace=modes.NAMESPACE)
    cache.install(cached)
    result: dict[int, tuple[float, float]] = {}
    try:
        for count in counts:
            medians = []
            for engine in (cached, plain):
                factory = sessionmaker(engine)
                samples = []
                for _ in range(repeat):
                    started = time.perf_counter_ns()
                    with factory() as session:
                        for table in written[:count]:
                            session.execute(insert(table).values(n=1))
                        session.commit()
                    samples.append((time.perf_counter_ns() - started) / 1e6)
                medians.append(statistics.median(samples))
            result[count] = (medians[0], medians[1])
    finally:
        cache.uninstall(cached)
        metadata.drop_all(plain)
        cached.dispose()
        plain.dispose()
    return result


def _reader(url: str, redis_url: str, employees: int, seconds: float, start: Any, out: Any) -> None:
    from bench.cli import queries

    engine = create_engine(url)
    cache = QueryCache.from_url(redis_url, namespace=modes.NAMESPACE)
    cache.install(engine)
    factory = sessionmaker(engine, execution_options={"redis_cache": True})
    query = queries(employees)["get by pk"]
    with factory() as session:
        query(session)
    start.wait()
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        with factory() as session:
            query(session)
        done += 1
    out.put(done / seconds)
    engine.dispose()


def throughput(
    url: str, redis_url: str, employees: int, counts: list[int], seconds: float
) -> dict[int, float]:
    """Hot requests per second, all processes together."""
    ctx = multiprocessing.get_context("spawn")
    result: dict[int, float] = {}
    for count in counts:
        queue, barrier = ctx.Queue(), ctx.Barrier(count)
        workers = [
            ctx.Process(target=_reader, args=(url, redis_url, employees, seconds, barrier, queue))
            for _ in range(count)
        ]
        for worker in workers:
            worker.start()
        result[count] = sum(queue.get(timeout=120) for _ in workers)
        for worker in workers:
            worker.join()
    return result


def run(
    url: str, redis_url: str, hot: modes.Mode, page: Any, *, smoke: bool, employees: int
) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    repeat = 5 if smoke else 100
    return {
        "entries": _hot_while_filling(
            client,
            hot,
            page,
            "{bench}:e:filler-",
            b"x" * 300,
            [100, 1_000] if smoke else [1_000, 100_000, 1_000_000],
            repeat,
        ),
        "tables": _hot_while_filling(
            client,
            hot,
            page,
            "{bench}:v:filler:table_",
            b"1",
            [10, 100] if smoke else [10, 1_000],
            repeat,
        ),
        "commits": commits(url, redis_url, [1, 5] if smoke else [1, 20], 3 if smoke else 50),
        "throughput": throughput(
            url, redis_url, employees, [1, 2] if smoke else [1, 2, 4], 0.3 if smoke else 3.0
        ),
    }
