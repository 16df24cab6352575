"""The API's JSON: what a request may carry and every answer it can get, as the OpenAPI document
describes them.

Request models are bounded by the database schema, so that nothing a client sends reaches the
database as a value its columns cannot hold (that would be a server error, not the client's): ids
within the id columns' range, names within their length. Text is any Unicode the utf8mb4 columns
store; a JSON string may also carry a lone surrogate (``"\\ud800"``), which no column can store
and which pydantic's ``str`` already refuses (422, ``tests/test_example_app.py`` holds it to that).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import Path
from pydantic import BaseModel, Field

from example_app.models import Department, Employee

ID_MAX: Final = 2**31 - 1
"""The largest id the id columns hold: they are INTEGER, a signed 32-bit INT on MySQL/MariaDB.
Auto-increment ids start at 1, so an id outside 1..ID_MAX names nothing and can be refused (422)."""

DEPARTMENT_NAME_MAX: Final[int] = Department.__table__.c.name.type.length
EMPLOYEE_NAME_MAX: Final[int] = Employee.__table__.c.name.type.length


Id = Annotated[int, Field(ge=1, le=ID_MAX)]
DepartmentName = Annotated[str, Field(min_length=1, max_length=DEPARTMENT_NAME_MAX)]
EmployeeName = Annotated[str, Field(min_length=1, max_length=EMPLOYEE_NAME_MAX)]


# -- requests ----------------------------------------------------------------------------------


PathId = Annotated[int, Path(ge=1, le=ID_MAX)]
"""An id in a path: outside the id columns' range it names nothing (422)."""
PathName = Annotated[str, Path(min_length=1, max_length=DEPARTMENT_NAME_MAX)]


class DepartmentIn(BaseModel):
    department_name: DepartmentName


class EmployeeIn(BaseModel):
    employee_name: EmployeeName
    department_id: Id


# -- answers: every one says which process served it -----------------------------------------


class Served(BaseModel):
    serving: str = Field(description="host:pid of the process that answered")
    cores: int


class Health(Served):
    status: str


class CacheStats(Served):
    hits: int
    misses: int
    stores: int
    bypasses: int
    invalidations: int
    errors: int


class EmployeeJson(BaseModel):
    id: int
    name: str
    department_id: int
    department_name: str | None


class EmployeeList(Served):
    employees: list[EmployeeJson]


class OneEmployee(Served):
    employee: EmployeeJson


class DepartmentJson(BaseModel):
    department_id: int
    department_name: str


class DepartmentList(Served):
    departments: list[DepartmentJson]


class OneDepartment(Served):
    department: DepartmentJson


class Written(Served):
    id: int


class Deleted(Served):
    id: str = Field(description="the deleted id, as a string (the seed's JSON)")


class Error(Served):
    error: str


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the offending field, empty for the whole body")
    message: str


class Invalid(Error):
    fields: list[FieldError]


REPORT_HEADERS: Final[dict[str, Any]] = {
    "X-Cache": {
        "description": "what the cache did for this request",
        "required": True,
        "schema": {"type": "string", "pattern": r"^hits=\d+ misses=\d+ bypasses=\d+$"},
    },
    "Server-Timing": {
        "description": "time the app spent on it, in ms",
        "required": True,
        "schema": {"type": "string", "pattern": r"^app;dur=\d+\.\d\d$"},
    },
}
"""Headers on every answer (the app's middleware), documented on every response."""


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of an operation that can answer these error statuses."""
    described = {
        400: (Error, "the body is not JSON text (not UTF-8)"),
        404: (Error, "no such id"),
        409: (Error, "a foreign key forbids it; nothing was written"),
        422: (Invalid, "invalid parameters or body, field by field"),
    }
    return {
        status: {"model": described[status][0], "description": described[status][1]}
        for status in statuses
    }
