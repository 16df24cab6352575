"""Code that runs in other processes (multiprocessing 'spawn'): each builds its own engine and
cache, exactly as another app server would."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

from sqlalchemy import create_engine, event, select

from sa_redis_cache import QueryCache
from sa_redis_cache.invalidation import Invalidator
from tests.conftest import caching_sessionmaker
from tests.models import Employee


def _cache_for(url: str, redis_url: str, namespace: str, **options: Any) -> tuple[Any, QueryCache]:
    engine = create_engine(url)
    cache = QueryCache.from_url(redis_url, namespace=namespace, **options)
    cache.install(engine)
    return engine, cache


def rename_employee(
    url: str, redis_url: str, namespace: str, employee_id: int, name: str, out: Any
) -> None:
    engine, _ = _cache_for(url, redis_url, namespace)
    with caching_sessionmaker(engine)() as session:
        employee = session.get(Employee, employee_id)
        assert employee is not None
        employee.name = name
        session.commit()
    engine.dispose()


def commit_then_die(
    url: str, redis_url: str, namespace: str, lease: float, name: str, out: Any
) -> None:
    """Commit a rename, then die (SIGKILL) after the database commit, before the Redis bump."""
    engine = create_engine(url)
    cache = QueryCache.from_url(redis_url, namespace=namespace, write_lease=lease)
    cache.install(engine)

    def die(*args: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    Invalidator.finish = die  # type: ignore[method-assign]  # this process only
    with caching_sessionmaker(engine)() as session:
        session.get(Employee, 1).name = name  # type: ignore[union-attr]
        session.commit()


def employee_names(url: str, redis_url: str, namespace: str, out: Any) -> None:
    engine, cache = _cache_for(url, redis_url, namespace)
    with caching_sessionmaker(engine)() as session:
        out.put(list(session.scalars(select(Employee.name).order_by(Employee.id))))
    out.put(cache.stats())
    engine.dispose()


def read_together(url: str, redis_url: str, namespace: str, start: Any, out: Any) -> None:
    """Wait for the others, then read; report how many statements reached the database."""
    engine, _ = _cache_for(url, redis_url, namespace, stampede_wait=30)
    reached: list[str] = []

    def slow_database(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        # registered after install(): runs only for statements that reach the database
        if "FROM employee" in statement:
            reached.append(statement)
            time.sleep(0.5)  # a slow query, so that every process misses while it runs
        return False

    event.listen(engine, "do_execute", slow_database)
    with caching_sessionmaker(engine)() as session:
        session.connection()
        start.wait()
        names = list(session.scalars(select(Employee.name).order_by(Employee.id)))
    out.put((len(reached), names))
    engine.dispose()


def run_together(target: Any, count: int, *args: Any, timeout: float = 120) -> list[Any]:
    """Run ``count`` processes of ``target(*args, barrier, queue)``; return what they put."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(count)
    workers = [ctx.Process(target=target, args=(*args, barrier, queue)) for _ in range(count)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=timeout) for _ in workers]
    for worker in workers:
        worker.join(timeout)
        assert worker.exitcode == 0, f"{target.__name__} exited with {worker.exitcode}"
    return results


def run(target: Any, *args: Any, timeout: float = 60, exitcode: int = 0) -> list[Any]:
    """Run ``target(*args, queue)`` in a fresh process; return what it put on the queue."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(*args, queue))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        raise AssertionError(f"{target.__name__} did not finish in {timeout}s")
    assert process.exitcode == exitcode, f"{target.__name__} exited with {process.exitcode}"
    results = []
    while not queue.empty():
        results.append(queue.get())
    return results
