"""How the cache scales: hot latency against the number of entries and of tables in Redis, commit
latency against the number of tables written, throughput against the number of processes."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from typing import Any

import redis
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert
from sqlalchemy.orm import Session, sessionmaker

from bench import modes
from sa_redis_cache import QueryCache


def _fill(client: redis.Redis, prefix: str, count: int, value: bytes) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"{prefix}{i}", value, px=3_600_000)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def hot_while_filled(
    url: str, redis_url: str, query: Any, fillers: dict[int, tuple[str, bytes]], repeat: int
) -> dict[int, float]:
    """Median hot latency of ``query`` on caches whose namespaces hold ``count`` filler keys
    (``prefix`` + i), one namespace per count, the requests interleaved across them."""
    client = redis.Redis.from_url(redis_url)
    caches: dict[int, tuple[QueryCache, Any, sessionmaker[Session]]] = {}
    for count, (prefix, value) in fillers.items():
        namespace = f"bench-{count}-{prefix[0]}"
        cache = QueryCache.from_url(redis_url, namespace=namespace)
        engine = create_engine(url)
        cache.install(engine)
        _fill(client, "{" + namespace + "}:" + prefix, count, value)
        factory = sessionmaker(engine, execution_options={"redis_cache": True})
        for _ in range(3):
            with factory() as session:
                query(session)
        caches[count] = (cache, engine, factory)
    samples: dict[int, list[float]] = {count: [] for count in caches}
    try:
        for _ in range(repeat):
            for count, (_, _, factory) in caches.items():
                started = time.perf_counter_ns()
                with factory() as session:
                    query(session)
                samples[count].append((time.perf_counter_ns() - started) / 1e6)
    finally:
        for cache, engine, _ in caches.values():
            cache.uninstall(engine)
            cache.clear()
            engine.dispose()
    return {count: statistics.median(values) for count, values in samples.items()}


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


def run(url: str, redis_url: str, page: Any, *, smoke: bool, employees: int) -> dict[str, Any]:
    repeat = 5 if smoke else 200
    entry_counts = [100, 1_000] if smoke else [1_000, 100_000, 1_000_000]
    table_counts = [10, 100] if smoke else [10, 1_000]
    return {
        "entries": hot_while_filled(
            url, redis_url, page, {n: ("e:filler-", b"x" * 300) for n in entry_counts}, repeat
        ),
        "tables": hot_while_filled(
            url, redis_url, page, {n: ("v:filler:table_", b"1") for n in table_counts}, repeat
        ),
        "commits": commits(url, redis_url, [1, 5] if smoke else [1, 20], 3 if smoke else 50),
        "throughput": throughput(
            url, redis_url, employees, [1, 2] if smoke else [1, 2, 4], 0.3 if smoke else 3.0
        ),
    }
