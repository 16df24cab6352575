"""The demo API through FastAPI's TestClient on MariaDB and Redis: every endpoint, every error
status, and the invalidation story as a client sees it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from example_app.app import create_app
from example_app.migrations import downgrade, seed, upgrade
from example_app.settings import make_engine
from sa_redis_cache import QueryCache
from sa_redis_cache.stats import Counts

CRUD = "/api/v1/crud"


STACKS = ["mysqldb", "asyncmy"]
"""The demo on Session (MySQLdb) and on AsyncSession (asyncmy): same API, same tests."""


@pytest.fixture(params=STACKS)
def client(
    request: pytest.FixtureRequest, demo_mysql_url: URL, redis_url: str, query_cache: QueryCache
) -> Iterator[TestClient]:
    url = demo_mysql_url.set(drivername=f"mysql+{request.param}")
    migrations = make_engine(url.render_as_string(hide_password=False))  # a sync engine
    upgrade(migrations)
    seed(migrations)
    app = create_app(url.render_as_string(hide_password=False), redis_url, query_cache.namespace)
    with TestClient(app) as test_client:  # its lifespan closes the app's engine and cache
        yield test_client
    downgrade(migrations)
    migrations.dispose()


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


@pytest.mark.parametrize("department_id", [2**31, 4503599627370496, -1])
def test_ids_the_column_cannot_hold_are_422_not_500(client: TestClient, department_id: int) -> None:
    """The id columns are INT: a body id beyond them is refused before it reaches the database."""
    before = client.get(f"{CRUD}/employees").json()["employees"]
    body = {"employee_name": "x", "department_id": department_id}
    for response in (
        client.post(f"{CRUD}/employees", json=body),
        client.put(f"{CRUD}/employees/1", json=body),
    ):
        assert response.status_code == 422
        assert [e["field"] for e in response.json()["fields"]] == ["department_id"]
    assert client.get(f"{CRUD}/employees").json()["employees"] == before


@pytest.mark.parametrize("path_id", ["0", str(2**31), str(10**30), "-5"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_path_ids_outside_the_column_range_are_422(
    client: TestClient, method: str, path_id: str
) -> None:
    for resource, body in (
        ("employees", {"employee_name": "x", "department_id": 1}),
        ("departments", {"department_name": "x"}),
    ):
        response = client.request(method, f"{CRUD}/{resource}/{path_id}", json=body)
        assert response.status_code == 422
        assert response.json()["error"] == "invalid request"


@pytest.mark.parametrize("path", ["/employees", "/departments"])
def test_lone_surrogates_are_422_not_500(client: TestClient, path: str) -> None:
    """JSON can spell a lone surrogate ("\\ud800"), which no column can store."""
    raw = '{"employee_name": "a\\ud800", "department_name": "a\\udfff", "department_id": 1}'
    response = client.post(CRUD + path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] in ("employee_name", "department_name")


def test_any_text_a_column_can_store_round_trips(client: TestClient) -> None:
    """Outside the BMP, NUL, line breaks, "/" and the longest name the columns hold."""
    name = "R/D \U0010ffff\x00\n" + "é" * 38
    assert len(name) == 45  # the column's length
    created = client.post(f"{CRUD}/departments", json={"department_name": name})
    assert created.status_code == 201
    department_id = created.json()["id"]
    employee = "\U0001f600" * 255
    added = client.post(
        f"{CRUD}/employees", json={"employee_name": employee, "department_id": department_id}
    )
    assert added.status_code == 201
    found = client.get(f"{CRUD}/getEmployeeByDepartment/{quote(name, safe='')}")
    assert [(e["name"], e["department_name"]) for e in found.json()["employees"]] == [
        (employee, name)
    ]
    too_long = client.post(f"{CRUD}/departments", json={"department_name": name + "x"})
    assert too_long.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/departments", "GET, POST"),
        ("PATCH", "/employees", "GET, POST"),
        ("OPTIONS", "/employees/1", "DELETE, GET, PUT"),
        ("POST", "/departments/1", "DELETE, GET, PUT"),
        ("DELETE", "/getEmployeeByDepartment/Sales", "GET"),
    ],
)
def test_a_method_a_path_lacks_is_405_naming_those_it_has(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, CRUD + path)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert response.json()["error"] == "Method Not Allowed"


def test_a_body_that_is_not_utf8_is_400_in_the_apis_json(client: TestClient) -> None:
    response = client.post(
        f"{CRUD}/departments",
        content=b'{"department_name": "\xc3("}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert set(response.json()) == {"error", "serving", "cores"}
