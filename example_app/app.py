"""The API: the seed's paths and JSON field names, on ORM sessions that cache every read.

There is no cache code here beyond switching it on: ``QueryCache.install`` and the session option.
Each endpoint's database work is a function of a ``Session``, run on the sync or the asyncio stack
as ``DATABASE_URL`` says (``work.py``).
Each response says what the cache did for it (``X-Cache``) and how long it took (``Server-Timing``).
Every answer, errors included, is JSON of a shape the OpenAPI document describes (``schemas.py``);
a method a path does not have gets 405 with ``Allow`` naming the ones it has.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from example_app.models import Department, Employee
from example_app.schemas import (
    REPORT_HEADERS,
    CacheStats,
    Deleted,
    DepartmentIn,
    DepartmentList,
    EmployeeIn,
    EmployeeList,
    Health,
    OneDepartment,
    OneEmployee,
    PathId,
    PathName,
    Written,
    errors,
)
from example_app.settings import database_url, make_app_engine, redis_client
from example_app.work import Work, opener
from sa_redis_cache import QueryCache, record

SERVING = f"{socket.gethostname()}:{os.getpid()}"
CORES = os.cpu_count() or 1


class _AnyText(StringConvertor):
    """A path parameter that may hold any text a name may hold: "/" (sent as %2F) and line breaks
    included, which Starlette's ``str`` (no "/") and ``path`` (no line break) refuse with 404."""

    regex = "(?s:.+)"


register_url_convertor("text", _AnyText())


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


async def _work(request: Request) -> AsyncIterator[Work]:
    async with request.app.state.open_work() as work:
        yield work


Db = Annotated[Work, Depends(_work)]


def _get_or_404(db: Session, model: type[Any], key: int) -> Any:
    found = db.get(model, key)
    if found is None:
        raise HTTPException(404, f"no {model.__tablename__} {key}")
    return found


def _allowed_methods(request: Request) -> str:
    """Every method some route of this path answers (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


def _links(operations: dict[str, str], **parameters: str) -> dict[str, Any]:
    """OpenAPI links from a created resource to the operations on it (stateful fuzzers follow
    them: create, then read, update, delete what was created)."""
    return {
        name: {"operationId": operation_id, "parameters": parameters}
        for name, operation_id in operations.items()
    }


def create_app(
    database_url_: str | None = None, redis_url: str | None = None, namespace: str | None = None
) -> FastAPI:
    """The app; with no arguments, configured from DATABASE_URL, REDIS_URL, CACHE_NAMESPACE and
    CACHE_REQUIRE_WATCHER (``uvicorn --factory example_app.app:create_app``)."""
    engine = make_app_engine(database_url_ or database_url())
    on_asyncio = isinstance(engine, AsyncEngine)
    namespace = namespace or os.environ.get("CACHE_NAMESPACE", "demo")
    cache = QueryCache(
        redis_client(redis_url, asyncio=on_asyncio),
        namespace=namespace,
        ttl=3600,
        require_watcher=os.environ.get("CACHE_REQUIRE_WATCHER", "") not in ("", "0"),
    )
    cache.install(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # close the pooled connections (an asyncio one belongs to the loop that is ending); the
        # engine and the client reconnect if the app is started again (as tests do)
        if isinstance(engine, AsyncEngine):
            await engine.dispose()
            await cache.client.aclose()  # type: ignore[union-attr]
        else:
            engine.dispose()

    app = FastAPI(title="sa_redis_cache demo: the seed's REST API", lifespan=lifespan)
    app.state.engine, app.state.cache, app.state.open_work = engine, cache, opener(engine)

    def openapi() -> dict[str, Any]:
        """FastAPI's document, plus the headers the middleware below adds to every answer."""
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            for path_item in document["paths"].values():
                for operation in path_item.values():
                    for response in operation["responses"].values():
                        response.setdefault("headers", {}).update(REPORT_HEADERS)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

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

    @app.exception_handler(StarletteHTTPException)  # also the routing's own 404, 405 and 400
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return JSONResponse(_body(error=exc.detail), status_code=exc.status_code, headers=headers)

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

    @app.get("/", operation_id="health", response_model=Health)
    async def health() -> dict[str, Any]:
        return _body(status="ok")

    @app.get("/api/v1/cache/stats", operation_id="cacheStats", response_model=CacheStats)
    async def cache_stats() -> dict[str, Any]:
        return _body(**cache.stats())

    crud = "/api/v1/crud"
    on_employee = {
        "GetEmployee": "getEmployee",
        "UpdateEmployee": "updateEmployee",
        "DeleteEmployee": "deleteEmployee",
    }
    on_department = {
        "GetDepartment": "getDepartment",
        "UpdateDepartment": "updateDepartment",
        "DeleteDepartment": "deleteDepartment",
    }

    @app.get(f"{crud}/employees", operation_id="listEmployees", response_model=EmployeeList)
    async def list_employees(db: Db) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            return _body(employees=[_employee_json(r) for r in session.execute(_employees())])

        return await db.run(work)

    @app.get(
        f"{crud}/employees/{{employee_id}}",
        operation_id="getEmployee",
        response_model=OneEmployee,
        responses=errors(404, 422),
    )
    async def get_employee(employee_id: PathId, db: Db) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            row = session.execute(_employees().where(Employee.id == employee_id)).first()
            if row is None:
                raise HTTPException(404, f"no employee {employee_id}")
            return _body(employee=_employee_json(row))

        return await db.run(work)

    @app.post(
        f"{crud}/employees",
        operation_id="createEmployee",
        status_code=201,
        response_model=Written,
        responses={
            **errors(400, 409, 422),
            201: {"links": _links(on_employee, employee_id="$response.body#/id")},
        },
    )
    async def create_employee(body: EmployeeIn, db: Db) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            employee = Employee(name=body.employee_name, department_id=body.department_id)
            session.add(employee)
            commit_or_conflict(session, f"no department {body.department_id}")
            return _body(id=employee.id)

        return await db.run(work)

    @app.put(
        f"{crud}/employees/{{employee_id}}",
        operation_id="updateEmployee",
        response_model=Written,
        responses=errors(400, 404, 409, 422),
    )
    async def update_employee(employee_id: PathId, body: EmployeeIn, db: Db) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            employee = _get_or_404(session, Employee, employee_id)
            employee.name, employee.department_id = body.employee_name, body.department_id
            commit_or_conflict(session, f"no department {body.department_id}")
            return _body(id=employee_id)

        return await db.run(work)

    @app.delete(
        f"{crud}/employees/{{employee_id}}",
        operation_id="deleteEmployee",
        response_model=Deleted,
        responses=errors(404, 422),
    )
    async def delete_employee(employee_id: PathId, db: Db) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            employee = _get_or_404(session, Employee, employee_id)
            session.delete(employee)
            session.commit()
            return _body(id=str(employee_id))

        return await db.run(work)

    @app.get(f"{crud}/departments", operation_id="listDepartments", response_model=DepartmentList)
    async def list_departments(db: Db) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            departments = session.scalars(select(Department).order_by(Department.id))
            return _body(departments=[_department_json(d) for d in departments])

        return await db.run(work)

    @app.get(
        f"{crud}/departments/{{department_id}}",
        operation_id="getDepartment",
        response_model=OneDepartment,
        responses=errors(404, 422),
    )
    async def get_department(department_id: PathId, db: Db) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            department = _get_or_404(session, Department, department_id)
            return _body(department=_department_json(department))

        return await db.run(work)

    @app.post(
        f"{crud}/departments",
        operation_id="createDepartment",
        status_code=201,
        response_model=Written,
        responses={
            **errors(400, 422),
            201: {
                "links": {
                    **_links(on_department, department_id="$response.body#/id"),
                    "GetEmployeesOfDepartment": {
                        "operationId": "getEmployeeByDepartment",
                        "parameters": {"name": "$request.body#/department_name"},
                    },
                    "CreateEmployeeInDepartment": {
                        "operationId": "createEmployee",
                        "requestBody": {"department_id": "$response.body#/id"},
                    },
                }
            },
        },
    )
    async def create_department(body: DepartmentIn, db: Db) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            department = Department(name=body.department_name)
            session.add(department)
            session.commit()
            return _body(id=department.id)

        return await db.run(work)

    @app.put(
        f"{crud}/departments/{{department_id}}",
        operation_id="updateDepartment",
        response_model=Written,
        responses=errors(400, 404, 422),
    )
    async def update_department(
        department_id: PathId, body: DepartmentIn, db: Db
    ) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            department = _get_or_404(session, Department, department_id)
            department.name = body.department_name
            session.commit()
            return _body(id=department_id)

        return await db.run(work)

    @app.delete(
        f"{crud}/departments/{{department_id}}",
        operation_id="deleteDepartment",
        response_model=Deleted,
        responses=errors(404, 409, 422),
    )
    async def delete_department(department_id: PathId, db: Db) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            department = _get_or_404(session, Department, department_id)
            session.delete(department)
            commit_or_conflict(session, f"department {department_id} still has employees")
            return _body(id=str(department_id))

        return await db.run(work)

    @app.get(
        f"{crud}/getEmployeeByDepartment/{{name:text}}",
        operation_id="getEmployeeByDepartment",
        response_model=EmployeeList,
        responses=errors(422),
    )
    async def employees_by_department(name: PathName, db: Db) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            rows = session.execute(_employees().where(Department.name == name))
            return _body(employees=[_employee_json(r) for r in rows])

        return await db.run(work)

    return app
