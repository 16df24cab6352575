"""The demo's schema (the seed's department and employee) at benchmark size, loaded fast."""

from __future__ import annotations

from sqlalchemy import Engine, insert, make_url
from sqlalchemy import create_engine as sa_create_engine

from example_app.models import Base, Department, Employee

__all__ = ["Department", "Employee", "ensure_database", "load"]


def ensure_database(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() in ("mysql", "mariadb") and parsed.database:
        server = sa_create_engine(parsed.set(database=""))
        with server.begin() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{parsed.database}`")
        server.dispose()


def load(engine: Engine, departments: int, employees: int) -> None:
    """Recreate the tables and fill them: departments named ``dept-N``, employees spread evenly."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(Department.__table__),
            [{"id": d, "name": f"dept-{d}"} for d in range(1, departments + 1)],
        )
        batch = 10_000
        for start in range(1, employees + 1, batch):
            conn.execute(
                insert(Employee.__table__),
                [
                    {"id": e, "name": f"employee-{e}", "department_id": (e % departments) + 1}
                    for e in range(start, min(start + batch, employees + 1))
                ],
            )
