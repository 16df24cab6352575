"""``python -m example_app.walkthrough``: two instances of the API on one database and one Redis,
and the seed's requests, showing what the cache does at each step. Ends by itself.

Uses DATABASE_URL and REDIS_URL when set; otherwise a fresh SQLite file and an in-process Redis.

``--binlog`` adds the writes the cache cannot see: it runs on MariaDB with its binary log on (a
throwaway server unless DATABASE_URL names one), starts the binlog watcher beside the two
instances, and has the ``mysql`` command line write behind the apps' back, as the seed's Go
service would. Needs the ``binlog`` extra (``make demo-binlog``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from example_app.app import create_app
from example_app.migrations import seed, upgrade


class Instance:
    """One app server on a free loopback port, in a thread of this process."""

    def __init__(self, name: str, database_url: str) -> None:
        self.name = name
        self.app = create_app(database_url)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Instance:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.engine.dispose()


def step(number: int, title: str, instance: Instance, method: str, path: str,
         body: dict[str, Any] | None = None, note: str = "") -> dict[str, Any]:  # fmt: skip
    with httpx.Client(base_url=f"http://127.0.0.1:{instance.port}") as client:
        response = client.request(method, path, json=body)
    timing = response.headers.get("Server-Timing", "").removeprefix("app;dur=")
    cache = response.headers.get("X-Cache", "")
    hits = int(cache.split()[0].split("=")[1]) if cache else 0
    verdict = "HIT" if hits else ("write" if method != "GET" else "miss")
    print(f"{number}. {title}")
    print(f"   {method} {path} -> {instance.name}: {response.status_code}, {verdict} ({cache}), "
          f"{float(timing or 0):.1f} ms")  # fmt: skip
    if note:
        print(f"   {note}")
    data: dict[str, Any] = response.json()
    return data


def first_employee(data: dict[str, Any]) -> str:
    first = data["employees"][0]
    return f"employee {first['id']}: {first['name']} ({first['department_name']})"


@contextlib.contextmanager
def binlog_database() -> Iterator[str]:
    """DATABASE_URL if set (it must have its binlog on), else a throwaway MariaDB."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    from example_app.mariadb import ThrowawayMariaDB

    print("(starting a throwaway MariaDB with its binary log on)")
    with ThrowawayMariaDB(driver="pymysql") as server:
        yield f"{server.url}demo"


def outside_write(database_url: str, sql: str) -> str:
    """Run ``sql`` with the mysql command line (pymysql if there is none): no cache involved."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    client = shutil.which("mysql") or shutil.which("mariadb")
    if client:
        subprocess.run(
            [client, f"-h{url.host}", f"-P{url.port or 3306}", f"-u{url.username}",
             *([f"-p{url.password}"] if url.password else []), url.database or "", "-e", sql],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        return "the mysql command line"
    import pymysql

    conn = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username,
                           password=url.password or "", database=url.database)  # fmt: skip
    with conn.cursor() as cursor:
        cursor.execute(sql)
    conn.commit()
    conn.close()
    return "a bare pymysql connection"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--binlog", action="store_true", help="MariaDB, the binlog watcher, an outside write"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="(%(message)s)", stream=sys.stdout)
    with tempfile.TemporaryDirectory() as directory, contextlib.ExitStack() as stack:
        if args.binlog:
            database_url = stack.enter_context(binlog_database())
            ensure_database(database_url)
        else:
            database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{directory}/walkthrough.db"
        print("sa_redis_cache walkthrough: the seed's API, two app instances, one database, one "
              "Redis\n")  # fmt: skip
        with Instance("app A", database_url) as a, Instance("app B", database_url) as b:
            upgrade(a.app.state.engine)
            seed(a.app.state.engine)
            path = "/api/v1/crud/employees"
            data = step(1, "cold read: nothing cached yet, the database answers", a, "GET", path)
            data = step(2, "warm read: the same request, served from Redis", a, "GET", path,
                        note=first_employee(data))  # fmt: skip
            step(3, "a write: rename employee 1 (its tables' versions move at commit)", a, "PUT",
                 f"{path}/1", {"employee_name": "Ada Lovelace", "department_id": 1})  # fmt: skip
            data = step(4, "the read after the write: the old entry is dead, a fresh miss", a,
                        "GET", path)  # fmt: skip
            print(f"   {first_employee(data)}")
            data = step(5, "through the second instance: the fresh entry app A just stored", b,
                        "GET", path)  # fmt: skip
            print(f"   {first_employee(data)}")
            step(6, "the seed's join by department name, twice", b, "GET",
                 "/api/v1/crud/getEmployeeByDepartment/Sales")  # fmt: skip
            step(7, "...the second time from the cache", b, "GET",
                 "/api/v1/crud/getEmployeeByDepartment/Sales")  # fmt: skip
            if args.binlog:
                outside_writes(a, b, database_url)
    outside = ", and the outside write once the watcher passed it on" if args.binlog else ""
    print(f"\ndone: every read after the write saw it, on both instances{outside}")
    return 0


def outside_writes(a: Instance, b: Instance, database_url: str) -> None:
    """Steps 8-10: a write the apps cannot see, passed on by the binlog watcher."""
    from sa_redis_cache.binlog import BinlogWatcher

    cache = a.app.state.cache
    watcher = BinlogWatcher(database_url, cache.client, namespace=cache.namespace, ttl=3600)
    watcher.start()
    try:
        deadline = time.monotonic() + 30
        while not watcher.caught_up:
            if watcher.error or time.monotonic() > deadline:
                raise RuntimeError(f"the binlog watcher did not start: {watcher.error}")
            time.sleep(0.01)
        path = "/api/v1/crud/employees"
        with httpx.Client(base_url=f"http://127.0.0.1:{b.port}") as client:
            client.get(path)  # a new watcher invalidated everything: cache the list again
        step(8, "the binlog watcher follows the database; the list is cached", b, "GET", path)
        before = watcher.transactions
        sql = "UPDATE employee SET name = 'Grace Hopper' WHERE name = 'Grace'"
        started = time.perf_counter()
        client = outside_write(database_url, sql)
        print(f"9. an outside write: {client} runs, with no cache and no SQLAlchemy")
        print(f"   {sql}")
        while watcher.transactions == before:
            if time.monotonic() > deadline:
                raise RuntimeError("the binlog watcher did not pass the write on")
            time.sleep(0.001)
        print(f"   the watcher bumped employee {(time.perf_counter() - started) * 1000:.0f} ms "
              f"after the client started")  # fmt: skip
        data = step(10, "the cached API sees it: a fresh miss, then the new name", b, "GET", path)
        grace = next(e for e in data["employees"] if e["name"].startswith("Grace"))
        print(f"   employee {grace['id']}: {grace['name']} ({grace['department_name']})")
    finally:
        watcher.stop()


def ensure_database(database_url: str) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    server = create_engine(url.set(database=""))
    with server.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{url.database}`")
    server.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
