"""``python -m example_app.walkthrough``: two instances of the API on one database and one Redis,
and the seed's requests, showing what the cache does at each step. Ends by itself.

Uses DATABASE_URL and REDIS_URL when set; otherwise a fresh SQLite file and an in-process Redis.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import threading
import time
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


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="(%(message)s)", stream=sys.stdout)
    with tempfile.TemporaryDirectory() as directory:
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
    print("\ndone: every read after the write saw it, on both instances")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
