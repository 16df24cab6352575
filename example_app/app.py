"""The API: the seed's paths and JSON field names, on ORM sessions that cache every read.

There is no cache code here beyond switching it on: ``QueryCache.install`` and the session option.
Each response says what the cache did for it (``X-Cache``) and how long it took (``Server-Timing``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from example_app.models import Department, Employee
from example_app.settings import database_url, make_engine, redis_client
from sa_redis_cache import CachingQuery, QueryCache, record

SERVING = f"{socket.gethostname()}:{os.getpid()}"
CORES = os.cpu_count() or 1


class DepartmentIn(BaseModel):
    department_name: str = Field(min_length=1, max_length=45)


class EmployeeIn(BaseModel):
    employee_name: str = Field(min_length=1, max_length=255)
    department_id: int = Field(gt=0)


def _body(**fields: Any) -> dict[str, Any]:
    return {**fields, "serving": SERVING, "cores": CORES}


def _employees() -> Select[Any]:
    """Employees with their department flattened in (the seed's LEFT JOIN)."""
    return (
        select(Employee.id, Employee.name, Employee.department_id, Department.name)
        .outerjoin(Department, Department.id == Employee.department_id)
        .order_by(Employee.id)
    )


def _employee_json(row: Any) -> dict[str, Any]:
    return {"id": row[0], "name": row[1], "department_id": row[2], "department_name": row[3]}


def _department_json(department: Department) -> dict[str, Any]:
    return {"department_id": department.id, "department_name": department.name}


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as db:
        yield db


Db = Annotated[Session, Depends(_session)]


def _get_or_404(db: Session, model: type[Any], key: int) -> Any:
    found = db.get(model, key)
    if found is None:
        raise HTTPException(404, f"no {model.__tablename__} {key}")
    return found


def create_app(
    database_url_: str | None = None, redis_url: str | None = None, namespace: str | None = None
) -> FastAPI:
    """The app; with no arguments, configured from DATABASE_URL, REDIS_URL, CACHE_NAMESPACE and
    CACHE_REQUIRE_WATCHER (``uvicorn --factory example_app.app:create_app``)."""
    engine = make_engine(database_url_ or database_url())
    namespace = namespace or os.environ.get("CACHE_NAMESPACE", "demo")
    cache = QueryCache(
        redis_client(redis_url),
        namespace=namespace,
        ttl=3600,
        require_watcher=os.environ.get("CACHE_REQUIRE_WATCHER", "") not in ("", "0"),
    )
    cache.install(engine)
    sessions = sessionmaker(engine, query_cls=CachingQuery, execution_options={"redis_cache": True})

    app = FastAPI(title="sa_redis_cache demo: the seed's REST API")
    app.state.engine, app.state.cache, app.state.sessions = engine, cache, sessions

    @app.middleware("http")
    async def cache_report(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        with record() as counts:
            response = await call_next(request)
        response.headers["X-Cache"] = (
            f"hits={counts.hits} misses={counts.misses} bypasses={counts.bypasses}"
        )
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1e3:.2f}"
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(_body(error=exc.detail), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(map(str, e["loc"][1:])), "message": e["msg"]}
                  for e in exc.errors()]  # fmt: skip
        return JSONResponse(_body(error="invalid request", fields=errors), status_code=422)

    def commit_or_conflict(db: Session, conflict: str) -> None:
        try:
            db.commit()
        except IntegrityError:
            db.rollback()  # nothing half-written
            raise HTTPException(409, conflict) from None

    @app.get("/")
    def health() -> dict[str, Any]:
        return _body(status="ok")

    @app.get("/api/v1/cache/stats")
    def cache_stats() -> dict[str, Any]:
        return _body(**cache.stats())

    crud = "/api/v1/crud"

    @app.get(f"{crud}/employees")
    def list_employees(db: Db) -> dict[str, Any]:
        return _body(employees=[_employee_json(r) for r in db.execute(_employees())])

    @app.get(f"{crud}/employees/{{employee_id}}")
    def get_employee(employee_id: int, db: Db) -> dict[str, Any]:
        row = db.execute(_employees().where(Employee.id == employee_id)).first()
        if row is None:
            raise HTTPException(404, f"no employee {employee_id}")
        return _body(employee=_employee_json(row))

    @app.post(f"{crud}/employees", status_code=201)
    def create_employee(body: EmployeeIn, db: Db) -> dict[str, Any]:
        employee = Employee(name=body.employee_name, department_id=body.department_id)
        db.add(employee)
        commit_or_conflict(db, f"no department {body.department_id}")
        return _body(id=employee.id)

    @app.put(f"{crud}/employees/{{employee_id}}")
    def update_employee(employee_id: int, body: EmployeeIn, db: Db) -> dict[str, Any]:
        employee = _get_or_404(db, Employee, employee_id)
        employee.name, employee.department_id = body.employee_name, body.department_id
        commit_or_conflict(db, f"no department {body.department_id}")
        return _body(id=employee_id)

    @app.delete(f"{crud}/employees/{{employee_id}}")
    def delete_employee(employee_id: int, db: Db) -> dict[str, Any]:
        employee = _get_or_404(db, Employee, employee_id)
        db.delete(employee)
        db.commit()
        return _body(id=str(employee_id))

    @app.get(f"{crud}/departments")
    def list_departments(db: Db) -> dict[str, Any]:
        departments = db.scalars(select(Department).order_by(Department.id))
        return _body(departments=[_department_json(d) for d in departments])

    @app.get(f"{crud}/departments/{{department_id}}")
    def get_department(department_id: int, db: Db) -> dict[str, Any]:
        department = _get_or_404(db, Department, department_id)
        return _body(department=_department_json(department))

    @app.post(f"{crud}/departments", status_code=201)
    def create_department(body: DepartmentIn, db: Db) -> dict[str, Any]:
        department = Department(name=body.department_name)
        db.add(department)
        db.commit()
        return _body(id=department.id)

    @app.put(f"{crud}/departments/{{department_id}}")
    def update_department(department_id: int, body: DepartmentIn, db: Db) -> dict[str, Any]:
        department = _get_or_404(db, Department, department_id)
        department.name = body.department_name
        db.commit()
        return _body(id=department_id)

    @app.delete(f"{crud}/departments/{{department_id}}")
    def delete_department(department_id: int, db: Db) -> dict[str, Any]:
        department = _get_or_404(db, Department, department_id)
        db.delete(department)
        commit_or_conflict(db, f"department {department_id} still has employees")
        return _body(id=str(department_id))

    @app.get(f"{crud}/getEmployeeByDepartment/{{name}}")
    def employees_by_department(name: str, db: Db) -> dict[str, Any]:
        rows = db.execute(_employees().where(Department.name == name))
        return _body(employees=[_employee_json(r) for r in rows])

    return app
