"""The seed's schema (department, employee) and a fast loader for realistic sizes."""

from __future__ import annotations

from sqlalchemy import Engine, ForeignKey, String, insert, make_url
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Department(Base):
    __tablename__ = "department"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(45), index=True)
    employees: Mapped[list[Employee]] = relationship(back_populates="department")


class Employee(Base):
    __tablename__ = "employee"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    department_id: Mapped[int] = mapped_column(ForeignKey("department.id"), index=True)
    department: Mapped[Department] = relationship(back_populates="employees")


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
