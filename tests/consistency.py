"""Consistency checker: can anybody catch the cache serving stale data?

Writer processes commit increasing counters to a few parent and child rows and record when each
commit returned. Reader processes read through the cache (2.0 select, legacy Query, a join of the
two tables, a relationship load) and record when each read started and what it saw. A read is
stale if it saw a counter lower than one whose commit had returned before the read started. The
cache's hit rate is reported too, so that a run in which the cache served nothing cannot pass.

Every process builds its own engine and cache, as separate app servers would. Times come from
CLOCK_MONOTONIC, which all processes on one machine share.

With ``tasks`` set, every reader and writer process is an asyncio application instead: that many
tasks per process, each with its own ``AsyncSession``, on one ``AsyncEngine`` (asyncmy) and one
cache on a ``redis.asyncio`` client per process.

External writers commit through raw MySQLdb, without SQLAlchemy or the cache: only a binlog
watcher can pass their writes on, so a read may miss one for at most ``lag_bound`` seconds after
its commit returned (the watcher's lag, measured by ``python -m bench.binlog``).

    python -m tests.consistency --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import ForeignKey, create_engine, make_url, select
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sa_redis_cache import QueryCache
from tests.conftest import caching_sessionmaker

PARENTS = 3
CHILDREN_PER_PARENT = 2
WATCHER_LAG_BOUND = 0.5
"""Seconds from an external commit to the watcher's bump that the checker allows (the README
states it; ``python -m bench.binlog`` measures the lag)."""


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "cc_parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int]
    children: Mapped[list[Child]] = relationship(back_populates="parent", order_by="Child.id")


class Child(Base):
    __tablename__ = "cc_child"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("cc_parent.id"))
    n: Mapped[int]
    parent: Mapped[Parent] = relationship(back_populates="children")


@dataclass
class Settings:
    database_url: str
    redis_url: str
    namespace: str
    readers: int = 4
    writers: int = 2
    reads_per_reader: int | None = 5000
    seconds: float | None = None
    writer_pause: float = 0.0
    reads_per_write: int = 40
    """Writers commit once per this many reads (all readers together; 0: as fast as they can,
    then ``writer_pause``). Pacing by reads, not by time, keeps the hit rate the same on a busy
    machine, where readers slow down and time-paced writers would not."""
    log_dir: str = ""
    external_writers: int = 0
    lag_bound: float = 0.0
    """Seconds after an external commit returned within which a read may still miss it."""
    tasks: int = 0
    """Async mode: reader and writer processes run this many asyncio tasks each (0: sync)."""
    near_cache: int = 0
    """Readers keep a near cache of this many entries (0: strict reads only)."""
    near_cache_lag: float = 0.1
    """With a near cache: a read may miss a commit that returned less than this long before."""
    async_driver: str = "asyncmy"


@dataclass
class Report:
    reads: int = 0
    commits: int = 0
    external_commits: int = 0
    stale: list[dict[str, Any]] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    bypasses: int = 0
    errors: int = 0
    near_hits: int = 0
    late_ms: list[float] = field(default_factory=list)
    """Near cache: for each read that missed a commit (allowed within the lag), how long after
    the first commit it missed had returned the read started."""

    @property
    def hit_rate(self) -> float:
        served = self.hits + self.misses + self.bypasses
        return self.hits / served if served else 0.0

    def summary(self) -> str:
        return (
            f"{self.reads} reads, {self.commits} commits ({self.external_commits} external), "
            f"{len(self.stale)} stale, "
            f"hit rate {self.hit_rate:.1%} (hits {self.hits}, misses {self.misses}, "
            f"bypasses {self.bypasses}, errors {self.errors})"
            + (
                f"; near cache: {self.near_hits} near hits, {len(self.late_ms)} reads missed a "
                f"commit by max {max(self.late_ms, default=0):.1f} ms, "
                f"p99.9 {_percentile(self.late_ms, 0.999):.1f} ms, "
                f"p99 {_percentile(self.late_ms, 0.99):.1f} ms"
                if self.near_hits
                else ""
            )
        )


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def prepare(settings: Settings) -> None:
    url = make_url(settings.database_url)
    if url.get_backend_name() in ("mysql", "mariadb") and url.database:
        server = create_engine(url.set(database=""))
        with server.begin() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{url.database}`")
        server.dispose()
    engine = create_engine(settings.database_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        for p in range(1, PARENTS + 1):
            session.add(Parent(id=p, n=0))
            for c in range(CHILDREN_PER_PARENT):
                session.add(Child(id=p * 10 + c, parent_id=p, n=0))
        session.commit()
    engine.dispose()


def child_ids() -> list[int]:
    return [p * 10 + c for p in range(1, PARENTS + 1) for c in range(CHILDREN_PER_PARENT)]


def _cached(settings: Settings) -> tuple[Any, QueryCache]:
    engine = create_engine(settings.database_url)
    cache = QueryCache.from_url(
        settings.redis_url,
        namespace=settings.namespace,
        near_cache=settings.near_cache,
        near_cache_lag=settings.near_cache_lag,
    )
    cache.install(engine)
    return engine, cache


def writer(settings: Settings, index: int, done: Any, progress: Any, shared: Any = None) -> None:
    engine, _ = shared or _cached(settings)
    make_session = caching_sessionmaker(engine)
    rng = random.Random(index)
    log: list[tuple[str, int, int, int]] = []  # (table, id, value, commit returned at)
    while not done.is_set():
        if settings.reads_per_write:  # this writer's next turn comes after so many reads
            turn = (len(log) * settings.writers + index + 1) * settings.reads_per_write
            while progress.value < turn and not done.wait(0.001):
                pass
        with make_session() as session:
            if rng.random() < 0.5:
                row: Parent | Child | None = session.get(
                    Child, rng.choice(child_ids()), with_for_update=True
                )
                table = "child"
            else:
                row = session.get(Parent, rng.randint(1, PARENTS), with_for_update=True)
                table = "parent"
            assert row is not None
            row.n += 1
            value, row_id = row.n, row.id
            session.commit()
            log.append((table, row_id, value, time.monotonic_ns()))
        time.sleep(settings.writer_pause)  # pacing, so that readers can hit between writes
    Path(settings.log_dir, f"writer-{index}.json").write_text(json.dumps(log))
    if shared is None:
        engine.dispose()


def external_writer(settings: Settings, index: int, done: Any, progress: Any) -> None:
    """Commits like writer(), through a bare DBAPI connection: nothing here tells the cache."""
    import MySQLdb

    url = make_url(settings.database_url)
    conn = MySQLdb.connect(
        host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
        password=url.password or "", database=url.database or "",
    )  # fmt: skip
    cursor = conn.cursor()
    rng = random.Random(500 + index)
    log: list[tuple[str, int, int, int]] = []
    while not done.is_set():
        if settings.reads_per_write:  # paced like writer(), on a schedule of their own
            turn = (len(log) * settings.external_writers + index + 1) * settings.reads_per_write
            while progress.value < turn and not done.wait(0.001):
                pass
        if rng.random() < 0.5:
            table, row_id = "child", rng.choice(child_ids())
        else:
            table, row_id = "parent", rng.randint(1, PARENTS)
        cursor.execute(f"SELECT n FROM cc_{table} WHERE id = %s FOR UPDATE", (row_id,))
        (value,) = cursor.fetchone()
        cursor.execute(f"UPDATE cc_{table} SET n = %s WHERE id = %s", (value + 1, row_id))
        conn.commit()
        log.append((table, row_id, value + 1, time.monotonic_ns()))
        time.sleep(settings.writer_pause)
    conn.close()
    Path(settings.log_dir, f"external-{index}.json").write_text(json.dumps(log))


def reader(settings: Settings, index: int, done: Any, progress: Any, shared: Any = None) -> None:
    engine, cache = shared or _cached(settings)
    make_session = caching_sessionmaker(engine)
    rng = random.Random(1000 + index)
    log: list[tuple[str, str, int, int, int]] = []  # (kind, table, id, value, read started at)
    deadline = time.monotonic() + settings.seconds if settings.seconds else None
    count = 0
    while (settings.reads_per_reader is None or count < settings.reads_per_reader) and (
        deadline is None or time.monotonic() < deadline
    ):
        count += 1
        with progress.get_lock():
            progress.value += 1
        kind = count % 4
        started = time.monotonic_ns()
        with make_session() as session:
            if kind == 0:  # 2.0 select
                cid = rng.choice(child_ids())
                n = session.scalar(select(Child.n).where(Child.id == cid))
                log.append(("select", "child", cid, int(n or 0), started))
            elif kind == 1:  # legacy Query
                pid = rng.randint(1, PARENTS)
                parent = session.query(Parent).filter(Parent.id == pid).one()
                log.append(("query", "parent", pid, parent.n, started))
            elif kind == 2:  # a join of the two tables
                cid = rng.choice(child_ids())
                child_n, parent_n, pid = session.execute(
                    select(Child.n, Parent.n, Parent.id).join(Child.parent).where(Child.id == cid)
                ).one()
                log.append(("join", "child", cid, child_n, started))
                log.append(("join", "parent", pid, parent_n, started))
            else:  # a relationship load
                pid = rng.randint(1, PARENTS)
                loaded = session.get(Parent, pid)
                assert loaded is not None
                for child in loaded.children:
                    log.append(("relationship", "child", child.id, child.n, started))
    Path(settings.log_dir, f"reader-{index}.json").write_text(
        json.dumps({"log": log, "reads": count, "stats": cache.stats()})
    )
    done.set()  # the first reader to finish stops the writers; the others finish their count
    if shared is None:
        engine.dispose()


# -- async mode: the same reads and writes through AsyncSession, many tasks per process -----------


def async_process(settings: Settings, role: str, index: int, done: Any, progress: Any) -> None:
    """One asyncio application: ``settings.tasks`` readers or writers sharing its engine and
    cache. Writes one log file for the process, as a sync reader or writer does."""
    asyncio.run(_async_process(settings, role, index, done, progress))


async def _async_process(
    settings: Settings, role: str, index: int, done: Any, progress: Any
) -> None:
    url = make_url(settings.database_url)
    engine = create_async_engine(url.set(drivername=f"mysql+{settings.async_driver}"))
    cache = QueryCache.from_url(settings.redis_url, asyncio=True, namespace=settings.namespace)
    cache.install(engine)
    sessions = async_sessionmaker(engine, execution_options={"redis_cache": True})
    try:
        if role == "writer":
            logs = await asyncio.gather(
                *(_async_writer(settings, index, t, done, progress, sessions)
                  for t in range(settings.tasks))
            )  # fmt: skip
            log = [entry for task_log in logs for entry in task_log]
            Path(settings.log_dir, f"writer-{index}.json").write_text(json.dumps(log))
        else:
            results = await asyncio.gather(
                *(_async_reader(settings, index, t, progress, sessions)
                  for t in range(settings.tasks))
            )  # fmt: skip
            log = [entry for task_log, _ in results for entry in task_log]
            reads = sum(count for _, count in results)
            Path(settings.log_dir, f"reader-{index}.json").write_text(
                json.dumps({"log": log, "reads": reads, "stats": cache.stats()})
            )
            done.set()
    finally:
        await engine.dispose()
        await cache.client.aclose()  # type: ignore[union-attr]


async def _async_writer(
    settings: Settings, index: int, task: int, done: Any, progress: Any, sessions: Any
) -> list[tuple[str, int, int, int]]:
    rng = random.Random(index * 100 + task)
    writer_number, writers = index * settings.tasks + task, settings.writers * settings.tasks
    log: list[tuple[str, int, int, int]] = []
    while not done.is_set():
        turn = (len(log) * writers + writer_number + 1) * settings.reads_per_write
        while settings.reads_per_write and progress.value < turn and not done.is_set():
            await asyncio.sleep(0.001)  # pacing: this writer's turn comes after so many reads
        session: AsyncSession
        async with sessions() as session:
            if rng.random() < 0.5:
                table, model, row_id = "child", Child, rng.choice(child_ids())
            else:
                table, model, row_id = "parent", Parent, rng.randint(1, PARENTS)
            row = await session.get(model, row_id, with_for_update=True)
            assert row is not None
            row.n += 1
            value = row.n
            await session.commit()
            log.append((table, row_id, value, time.monotonic_ns()))
    return log


async def _async_reader(
    settings: Settings, index: int, task: int, progress: Any, sessions: Any
) -> tuple[list[tuple[str, str, int, int, int]], int]:
    rng = random.Random(1000 + index * 100 + task)
    log: list[tuple[str, str, int, int, int]] = []
    deadline = time.monotonic() + settings.seconds if settings.seconds else None
    count = 0
    while (settings.reads_per_reader is None or count < settings.reads_per_reader) and (
        deadline is None or time.monotonic() < deadline
    ):
        count += 1
        with progress.get_lock():
            progress.value += 1
        kind = count % 4
        started = time.monotonic_ns()
        session: AsyncSession
        async with sessions() as session:
            if kind == 0:  # 2.0 select
                cid = rng.choice(child_ids())
                n = await session.scalar(select(Child.n).where(Child.id == cid))
                log.append(("select", "child", cid, int(n or 0), started))
            elif kind == 1:  # legacy Query, through run_sync
                pid = rng.randint(1, PARENTS)
                n = await session.run_sync(
                    lambda s, pid=pid: s.query(Parent).filter(Parent.id == pid).one().n
                )
                log.append(("query", "parent", pid, n, started))
            elif kind == 2:  # a join of the two tables
                cid = rng.choice(child_ids())
                child_n, parent_n, pid = (
                    await session.execute(
                        select(Child.n, Parent.n, Parent.id)
                        .join(Child.parent)
                        .where(Child.id == cid)
                    )
                ).one()
                log.append(("join", "child", cid, child_n, started))
                log.append(("join", "parent", pid, parent_n, started))
            else:  # a relationship load, awaited
                pid = rng.randint(1, PARENTS)
                loaded = await session.get(Parent, pid)
                assert loaded is not None
                for child in await loaded.awaitable_attrs.children:
                    log.append(("relationship", "child", child.id, child.n, started))
    return log, count


def check(settings: Settings) -> Report:
    report = Report()
    commits: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    lag_ns = int(settings.lag_bound * 1e9)
    for pattern, allowed in (("writer-*.json", 0), ("external-*.json", lag_ns)):
        for path in Path(settings.log_dir).glob(pattern):
            for table, row_id, value, returned in json.loads(path.read_text()):
                # a read that starts later than this must see the value
                commits[(table, row_id)].append((returned + allowed, value))
                report.commits += 1
                report.external_commits += bool(allowed)
    # per row: commit return times, and the highest value committed up to each of them
    returned_at: dict[tuple[str, int], list[int]] = {}
    highest: dict[tuple[str, int], list[int]] = {}
    for row, history in commits.items():
        history.sort()
        returned_at[row] = [returned for returned, _ in history]
        highest[row] = list(itertools.accumulate((v for _, v in history), max))
    for path in Path(settings.log_dir).glob("reader-*.json"):
        data = json.loads(path.read_text())
        report.reads += data["reads"]
        for name in ("hits", "misses", "bypasses", "errors", "near_hits"):
            setattr(report, name, getattr(report, name) + data["stats"].get(name, 0))
        near_lag_ns = int(settings.near_cache_lag * 1e9) if settings.near_cache else 0
        for kind, table, row_id, seen, started in data["log"]:
            row = (table, row_id)
            returned = bisect.bisect_left(returned_at.get(row, []), started)
            if returned and seen < (expected := highest[row][returned - 1]):
                # how long before the read started the first commit it missed had returned
                late = started - returned_at[row][bisect.bisect_right(highest[row], seen)]
                if late < near_lag_ns:
                    report.late_ms.append(late / 1e6)  # within the near cache's stated bound
                    continue
                report.stale.append(
                    {"kind": kind, "table": table, "id": row_id, "seen": seen,
                     "expected_at_least": expected, "late_ms": late / 1e6}
                )  # fmt: skip
    return report


def run(settings: Settings) -> Report:
    prepare(settings)
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    progress = ctx.Value("q", 0)  # reads so far, all readers together
    if settings.tasks:
        processes = [
            ctx.Process(target=async_process, args=(settings, role, i, done, progress))
            for role, count in (("writer", settings.writers), ("reader", settings.readers))
            for i in range(count)
        ]
    else:
        processes = [
            ctx.Process(target=writer, args=(settings, i, done, progress))
            for i in range(settings.writers)
        ]
    processes += [
        ctx.Process(target=external_writer, args=(settings, i, done, progress))
        for i in range(settings.external_writers)
    ]
    processes += [
        ctx.Process(target=reader, args=(settings, i, done, progress))
        for i in range(0 if settings.tasks else settings.readers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"a checker process exited with {process.exitcode}")
    return check(settings)


def run_threads(settings: Settings) -> Report:
    """The same check with threads sharing one engine and one cache (thread safety)."""
    prepare(settings)
    shared = _cached(settings)
    done = threading.Event()
    progress = multiprocessing.Value("q", 0)
    errors: list[BaseException] = []

    def guarded(target: Any, index: int) -> None:
        try:
            target(settings, index, done, progress, shared)
        except BaseException as exc:  # reported below: a thread's failure must fail the run
            errors.append(exc)
            done.set()

    threads = [
        *(threading.Thread(target=guarded, args=(writer, i)) for i in range(settings.writers)),
        *(threading.Thread(target=guarded, args=(reader, i)) for i in range(settings.readers)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shared[1].uninstall(shared[0])
    shared[0].dispose()
    if errors:
        raise errors[0]
    return check(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "SA_REDIS_CACHE_CONSISTENCY_URL",
            "mysql+mysqldb://root@127.0.0.1:3306/sa_redis_cache_consistency",
        ),
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("SA_REDIS_CACHE_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument(
        "--external-writers", type=int, default=0,
        help="writers with no SQLAlchemy and no cache: run sa-redis-cache watch-binlog on the "
        "database with --namespace NS, and give --namespace NS here",
    )  # fmt: skip
    parser.add_argument("--namespace", default=f"consistency-{uuid.uuid4().hex[:8]}")
    parser.add_argument(
        "--async-tasks", type=int, default=0,
        help="async mode: readers and writers are asyncio processes of this many tasks each",
    )  # fmt: skip
    parser.add_argument("--lag-bound", type=float, default=WATCHER_LAG_BOUND,
                        help="seconds an external write may go unseen")  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as log_dir:
        settings = Settings(
            database_url=args.database_url,
            redis_url=args.redis_url,
            namespace=args.namespace,
            readers=args.readers,
            writers=args.writers,
            external_writers=args.external_writers,
            lag_bound=args.lag_bound,
            reads_per_reader=None,
            seconds=args.minutes * 60,
            tasks=args.async_tasks,
            log_dir=log_dir,
        )
        report = run(settings)
        QueryCache.from_url(args.redis_url, namespace=settings.namespace).clear()
    print(report.summary())
    for stale in report.stale[:20]:
        print("STALE", stale)
    least = 0.3 if args.external_writers else 0.5  # external writers double the writes
    return 1 if report.stale or report.hit_rate < least else 0


if __name__ == "__main__":
    sys.exit(main())
