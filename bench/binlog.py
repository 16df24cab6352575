"""``python -m bench.binlog``: what the binlog watcher costs and how far behind it runs.

1. Lag: a client with no cache (raw MySQLdb) commits an UPDATE; from the moment its commit
   returns, this process polls the table's version key in Redis until the watcher (a subprocess,
   the console script) has bumped it. Idle, and again with other writers committing meanwhile.
2. The second bump: the apps' own writes come through the binlog too, and the watcher bumps their
   tables a few milliseconds after the app did, killing entries stored in between. Reader
   processes and an app writer (cache installed) run the same workload without and with the
   watcher; the hit rates say what the second bump costs.

Starts a throwaway MariaDB with its binlog on and a throwaway Redis unless given URLs; writes its
section of docs/benchmarks.md (kept by ``python -m bench``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import MySQLdb
import redis
from sqlalchemy import create_engine, make_url, select, update

from bench.report import BINLOG_MARKER, replace_binlog_section
from bench.servers import ThrowawayRedis
from example_app.mariadb import ThrowawayMariaDB
from example_app.models import Base, Department, Employee
from sa_redis_cache import CachingQuery, QueryCache
from sa_redis_cache.keys import KeyBuilder, server_identity

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "sa-redis-cache"
DATABASE = "bench_binlog"
HOT_ROWS = 20


@dataclass
class Lag:
    samples_ms: list[float]

    def line(self, label: str) -> str:
        ordered = sorted(self.samples_ms)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"| {label} | {len(ordered)} | {statistics.median(ordered):.1f} | {p99:.1f} | "
            f"{ordered[-1]:.1f} |"
        )


class WatcherProcess:
    def __init__(self, database_url: str, redis_url: str, namespace: str, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(SCRIPT), "watch-binlog", "--database-url", database_url,
                 "--redis-url", redis_url, "--namespace", namespace],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while "caught up" not in log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the watcher did not start:\n{log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def raw_connection(database_url: str) -> Any:
    url = make_url(database_url)
    return MySQLdb.connect(
        host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
        password=url.password or "", database=url.database or "",
    )  # fmt: skip


def measure_lag(database_url: str, redis_url: str, namespace: str, samples: int,
                background_writers: int) -> Lag:  # fmt: skip
    """Commit-to-bump, seen from outside: commit returns, then poll the version key."""
    client = redis.Redis.from_url(redis_url)
    url = make_url(database_url)
    key = KeyBuilder(namespace, server_identity(url), "", "").version(f"{DATABASE}.department")
    conn = raw_connection(database_url)
    cursor = conn.cursor()
    stop = threading.Event()

    def background(index: int) -> None:  # other clients keep the binlog busy meanwhile
        other = raw_connection(database_url)
        c = other.cursor()
        while not stop.is_set():
            c.execute("UPDATE employee SET name = %s WHERE id = %s", (f"bg{index}", index + 1))
            other.commit()
            time.sleep(0.002)
        other.close()

    threads = [threading.Thread(target=background, args=(i,)) for i in range(background_writers)]
    for thread in threads:
        thread.start()
    lags: list[float] = []
    try:
        for i in range(samples):
            before = client.get(key)
            cursor.execute("UPDATE department SET name = %s WHERE id = 1", (f"lag-{i}",))
            conn.commit()
            committed = time.perf_counter()
            deadline = committed + 10
            while client.get(key) == before:
                if time.perf_counter() > deadline:
                    raise RuntimeError("the watcher did not bump within 10 s")
            lags.append((time.perf_counter() - committed) * 1000)
            time.sleep(random.uniform(0.002, 0.02))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        conn.close()
    return Lag(lags)


def _reader(database_url: str, redis_url: str, namespace: str, seconds: float, out: Any) -> None:
    from sqlalchemy.orm import sessionmaker

    engine = create_engine(database_url)
    cache = QueryCache.from_url(redis_url, namespace=namespace)
    cache.install(engine)
    sessions = sessionmaker(engine, query_cls=CachingQuery, execution_options={"redis_cache": True})
    rng = random.Random()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with sessions() as session:
            if rng.random() < 0.8:
                session.get(Employee, rng.randint(1, HOT_ROWS))
            else:
                session.execute(select(Employee.id, Employee.name).limit(HOT_ROWS)).all()
    out.put((namespace, cache.stats()))
    engine.dispose()


def _app_writer(database_url: str, redis_url: str, namespaces: list[str], seconds: float,
                rate: float, out: Any) -> None:  # fmt: skip
    """One app whose engine carries a cache per namespace: each commit bumps in every one."""
    from sqlalchemy.orm import Session

    engine = create_engine(database_url)
    for namespace in namespaces:
        QueryCache.from_url(redis_url, namespace=namespace).install(engine)
    rng = random.Random()
    commits = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with Session(engine) as session:
            row = rng.randint(1, HOT_ROWS)
            session.execute(update(Employee).where(Employee.id == row).values(name=f"w{commits}"))
            session.commit()
        commits += 1
        time.sleep(1 / rate)
    out.put(("writer", {"commits": commits}))
    engine.dispose()


def hit_rates(database_url: str, redis_url: str, namespaces: list[str], seconds: float,
              readers: int, rate: float) -> tuple[int, dict[str, tuple[float, int]]]:  # fmt: skip
    """The same readers on each namespace at the same time, one writer for all: the app
    commits, and per namespace (hit rate, reads)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    processes = [
        ctx.Process(target=_reader, args=(database_url, redis_url, namespace, seconds, out))
        for namespace in namespaces
        for _ in range(readers)
    ]
    processes.append(
        ctx.Process(
            target=_app_writer, args=(database_url, redis_url, namespaces, seconds, rate, out)
        )
    )
    for process in processes:
        process.start()
    results = [out.get(timeout=seconds + 120) for _ in processes]
    for process in processes:
        process.join()
    rates: dict[str, tuple[float, int]] = {}
    for namespace in namespaces:
        stats = [s for n, s in results if n == namespace]
        hits = sum(s["hits"] for s in stats)
        served = sum(s["hits"] + s["misses"] + s["bypasses"] for s in stats)
        rates[namespace] = (hits / served, served)
    commits = sum(s["commits"] for n, s in results if n == "writer")
    return commits, rates


def prepare(database_url: str) -> None:
    url = make_url(database_url)
    server = create_engine(url.set(database=""))
    with server.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {DATABASE}")
        conn.exec_driver_sql(f"CREATE DATABASE {DATABASE}")
    server.dispose()
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(Department.__table__.insert(), [{"id": 1, "name": "dept-1"}])
        conn.execute(
            Employee.__table__.insert(),
            [{"id": i, "name": f"e{i}", "department_id": 1} for i in range(1, 101)],
        )
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a MariaDB/MySQL server with its binlog on "
                        "(default: a throwaway MariaDB)")  # fmt: skip
    parser.add_argument("--redis-url", help="default: a throwaway redis-server")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20, help="per hit-rate run")
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--write-rate", type=float, default=20, help="app commits per second")
    parser.add_argument("--output", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)

    server = None if args.database_url else ThrowawayMariaDB(driver="mysqldb").start()
    try:
        base = args.database_url or server.url  # type: ignore[union-attr]
        database_url = str(make_url(base).set(database=DATABASE).render_as_string(False))
        with ThrowawayRedis(args.redis_url) as redis_url:
            prepare(database_url)
            logs = Path(tempfile.mkdtemp(prefix="bench-binlog-"))
            rows: list[str] = []
            namespace = f"bench-binlog-{uuid.uuid4().hex[:6]}"
            watcher = WatcherProcess(base, redis_url, namespace, logs / "lag.log")
            try:
                idle = measure_lag(database_url, redis_url, namespace, args.samples, 0)
                busy = measure_lag(database_url, redis_url, namespace, args.samples // 2, 2)
            finally:
                watcher.stop()
            rows.append(idle.line("one writer, otherwise idle"))
            rows.append(busy.line("two other clients committing ~500 transactions/s"))

            # both namespaces at once, so that the machine's load falls on both alike
            plain = f"bench-nowatch-{uuid.uuid4().hex[:6]}"
            watched = f"bench-watch-{uuid.uuid4().hex[:6]}"
            watcher = WatcherProcess(base, redis_url, watched, logs / "hits.log")
            try:
                commits, rates = hit_rates(database_url, redis_url, [plain, watched],
                                           args.seconds, args.readers, args.write_rate)  # fmt: skip
            finally:
                watcher.stop()
            without, with_watcher = rates[plain], rates[watched]
            for used in (namespace, plain, watched):  # a shared Redis keeps nothing of ours
                QueryCache.from_url(redis_url, namespace=used).clear()
    finally:
        if server is not None:
            server.remove()

    section = "\n".join([
        BINLOG_MARKER,
        "## The binlog watcher",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python -m bench.binlog` (MariaDB with its "
        "binlog on, Redis, the watcher as its own process, all on loopback; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end of the run: "
        "the tail is the machine's scheduling as much as the watcher's).",
        "",
        "Lag: from the moment a raw MySQLdb commit returns to the moment the table's version key "
        "in Redis has moved (polled from outside).",
        "",
        "| load | commits | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"The second bump: one app writer committing {args.write_rate:g} updates/s to "
        f"{HOT_ROWS} hot rows ({commits} commits in {args.seconds:g} s) through two caches, one "
        f"namespace followed by a watcher and one not; {args.readers} reader processes per "
        "namespace at the same time, reading the hot rows by primary key and a list of them.",
        "",
        "| namespace | reads | hit rate |",
        "|---|---|---|",
        f"| no watcher | {without[1]} | {without[0]:.1%} |",
        f"| followed by the watcher (every app commit bumped twice) | {with_watcher[1]} | "
        f"{with_watcher[0]:.1%} |",
        "",
    ])  # fmt: skip
    print(section)
    path = Path(args.output) / "benchmarks.md"
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    path.write_text(replace_binlog_section(existing, section))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
