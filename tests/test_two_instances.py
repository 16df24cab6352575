"""Two real app processes (uvicorn on loopback ports) on one MariaDB database and one Redis: a
write through one is seen by the next read through the other."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import URL

from example_app.migrations import downgrade, seed, upgrade
from example_app.settings import make_engine
from sa_redis_cache import QueryCache

CRUD = "/api/v1/crud"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(params=["mysqldb", "asyncmy"])
def two_instances(
    request: pytest.FixtureRequest, demo_mysql_url: URL, redis_url: str, query_cache: QueryCache
) -> Iterator[tuple[str, str]]:
    """Two uvicorn processes of the demo, on Session (MySQLdb) or on AsyncSession (asyncmy)."""
    url = demo_mysql_url.set(drivername=f"mysql+{request.param}").render_as_string(
        hide_password=False
    )
    engine = make_engine(url)  # sync, for the migrations
    upgrade(engine)
    seed(engine)
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url,
           "CACHE_NAMESPACE": query_cache.namespace}  # fmt: skip
    processes, bases = [], []
    try:
        for _ in range(2):
            port = free_port()
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "example_app.app:create_app",
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                env=env,
            ))  # fmt: skip
            bases.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for base in bases:  # wait until both answer
            while True:
                try:
                    if httpx.get(base + "/", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{base} did not start"
                time.sleep(0.05)
        yield bases[0], bases[1]
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        downgrade(engine)
        engine.dispose()


def test_write_through_one_instance_read_through_the_other(two_instances: tuple[str, str]) -> None:
    a, b = two_instances
    assert httpx.get(a + "/").json()["serving"] != httpx.get(b + "/").json()["serving"]
    for base in (a, b, b):  # both instances cache the list; b serves it from Redis
        names = [e["name"] for e in httpx.get(base + f"{CRUD}/employees").json()["employees"]]
        assert names[0] == "Ada"
    assert httpx.get(b + f"{CRUD}/employees").headers["X-Cache"].startswith("hits=1")

    renamed = {"employee_name": "Ada Lovelace", "department_id": 1}
    assert httpx.put(a + f"{CRUD}/employees/1", json=renamed).status_code == 200
    response = httpx.get(b + f"{CRUD}/employees")
    assert response.json()["employees"][0]["name"] == "Ada Lovelace"
    assert response.headers["X-Cache"].startswith("hits=0")
