"""The demo API through FastAPI's TestClient on MariaDB and Redis: every endpoint, every error
status, and the invalidation story as a client sees it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from example_app.app import create_app
from example_app.migrations import downgrade, seed, upgrade
from sa_redis_cache import QueryCache
from sa_redis_cache.stats import Counts

CRUD = "/api/v1/crud"


@pytest.fixture
def client(demo_mysql_url: URL, redis_url: str, query_cache: QueryCache) -> Iterator[TestClient]:
    url = demo_mysql_url.render_as_string(hide_password=False)
    app = create_app(url, redis_url, namespace=query_cache.namespace)
    engine = app.state.engine
    upgrade(engine)
    seed(engine)
    with TestClient(app) as test_client:
        yield test_client
    downgrade(engine)
    app.state.cache.uninstall(engine)
    engine.dispose()


@pytest.fixture
def demo_cache(client: TestClient) -> QueryCache:
    cache: QueryCache = client.app.state.cache  # type: ignore[attr-defined]
    return cache


Recorder = Callable[[QueryCache], AbstractContextManager[Counts]]


def test_health_says_who_serves(client: TestClient) -> None:
    body = client.get("/").json()
    assert body["status"] == "ok" and ":" in body["serving"] and body["cores"] >= 1


def test_read_write_read_is_fresh(
    client: TestClient, demo_cache: QueryCache, cache_recorder: Recorder
) -> None:
    with cache_recorder(demo_cache) as first:
        employees = client.get(f"{CRUD}/employees").json()["employees"]
    assert first.misses == 1 and first.hits == 0
    assert employees[0] == {"id": 1, "name": "Ada", "department_id": 1,
                            "department_name": "Engineering"}  # fmt: skip
    response = client.get(f"{CRUD}/employees")
    assert response.headers["X-Cache"] == "hits=1 misses=0 bypasses=0"
    assert response.headers["Server-Timing"].startswith("app;dur=")

    renamed = {"employee_name": "Ada Lovelace", "department_id": 2}
    assert client.put(f"{CRUD}/employees/1", json=renamed).json()["id"] == 1
    with cache_recorder(demo_cache) as after:
        employees = client.get(f"{CRUD}/employees").json()["employees"]
    assert employees[0] == {"id": 1, "name": "Ada Lovelace", "department_id": 2,
                            "department_name": "Sales"}  # fmt: skip
    assert after.hits == 0 and after.misses == 1


def test_employee_endpoints(client: TestClient) -> None:
    created = client.post(f"{CRUD}/employees", json={"employee_name": "Eve", "department_id": 3})
    assert created.status_code == 201
    new_id = created.json()["id"]
    assert client.get(f"{CRUD}/employees/{new_id}").json()["employee"] == {
        "id": new_id, "name": "Eve", "department_id": 3, "department_name": "Ops"
    }  # fmt: skip
    by_department = client.get(f"{CRUD}/getEmployeeByDepartment/Ops").json()["employees"]
    assert [e["name"] for e in by_department] == ["Ken", "Eve"]
    deleted = client.delete(f"{CRUD}/employees/{new_id}")
    assert deleted.json()["id"] == str(new_id)
    assert client.get(f"{CRUD}/employees/{new_id}").status_code == 404
    assert [e["name"] for e in client.get(f"{CRUD}/getEmployeeByDepartment/Ops").json()[
        "employees"]] == ["Ken"]  # fmt: skip


def test_department_endpoints(client: TestClient) -> None:
    listed = client.get(f"{CRUD}/departments").json()["departments"]
    assert listed[0] == {"department_id": 1, "department_name": "Engineering"}
    created = client.post(f"{CRUD}/departments", json={"department_name": "Legal"})
    assert created.status_code == 201
    new_id = created.json()["id"]
    assert client.put(f"{CRUD}/departments/{new_id}", json={"department_name": "Law"}).json()[
        "id"] == new_id  # fmt: skip
    assert client.get(f"{CRUD}/departments/{new_id}").json()["department"] == {
        "department_id": new_id, "department_name": "Law"}  # fmt: skip
    assert client.delete(f"{CRUD}/departments/{new_id}").json()["id"] == str(new_id)
    assert client.get(f"{CRUD}/departments/{new_id}").status_code == 404
    assert client.get(f"{CRUD}/api/v1/cache/stats".replace(CRUD, "")).json()["hits"] >= 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/employees/999", None),
        ("PUT", "/employees/999", {"employee_name": "x", "department_id": 1}),
        ("DELETE", "/employees/999", None),
        ("GET", "/departments/999", None),
        ("PUT", "/departments/999", {"department_name": "x"}),
        ("DELETE", "/departments/999", None),
    ],
)
def test_unknown_ids_are_404(client: TestClient, method: str, path: str, body: Any) -> None:
    response = client.request(method, CRUD + path, json=body)
    assert response.status_code == 404
    assert "serving" in response.json()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/employees", {"department_id": 1}, "employee_name"),
        ("/employees", {"employee_name": "", "department_id": 1}, "employee_name"),
        ("/employees", {"employee_name": "x", "department_id": "one"}, "department_id"),
        ("/employees", {"employee_name": "x", "department_id": 0}, "department_id"),
        ("/departments", {"department_name": "x" * 46}, "department_name"),
        ("/departments", {}, "department_name"),
    ],
)
def test_invalid_bodies_are_422_with_field_errors(
    client: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    response = client.post(CRUD + path, json=body)
    assert response.status_code == 422
    assert field in [error["field"] for error in response.json()["fields"]]


def test_conflicts_are_409_and_write_nothing(client: TestClient) -> None:
    before = client.get(f"{CRUD}/employees").json()["employees"]
    response = client.delete(f"{CRUD}/departments/1")  # still has employees
    assert response.status_code == 409
    assert client.get(f"{CRUD}/departments/1").status_code == 200
    unknown = client.post(f"{CRUD}/employees", json={"employee_name": "x", "department_id": 99})
    assert unknown.status_code == 409
    moved = client.put(f"{CRUD}/employees/1", json={"employee_name": "y", "department_id": 99})
    assert moved.status_code == 409
    assert client.get(f"{CRUD}/employees").json()["employees"] == before
