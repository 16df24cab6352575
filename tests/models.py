"""The test schema: the seed's department/employee plus what the ORM features under test need
(joined inheritance, many-to-many, every value type a hit must give back unchanged)."""

from __future__ import annotations

import datetime
import enum
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Column,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Table,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Level(enum.Enum):
    junior = "junior"
    senior = "senior"


employee_project = Table(
    "employee_project",
    Base.metadata,
    Column("employee_id", ForeignKey("employee.id", ondelete="CASCADE"), primary_key=True),
    Column("project_id", ForeignKey("project.id"), primary_key=True),
)


class Department(Base):
    __tablename__ = "department"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(45), index=True)
    employees: Mapped[list[Employee]] = relationship(back_populates="department")


class Employee(Base):
    __tablename__ = "employee"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    department_id: Mapped[int] = mapped_column(ForeignKey("department.id"))
    salary: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    hired_at: Mapped[datetime.datetime | None]
    birthday: Mapped[datetime.date | None]
    photo: Mapped[bytes | None] = mapped_column(LargeBinary)
    level: Mapped[Level | None] = mapped_column(Enum(Level))
    extra: Mapped[Any] = mapped_column(JSON, nullable=True)
    department: Mapped[Department] = relationship(back_populates="employees")
    projects: Mapped[list[Project]] = relationship(
        secondary=employee_project, back_populates="members"
    )
    badges: Mapped[list[Badge]] = relationship(back_populates="employee")


class Badge(Base):
    """Owned by an employee through an ON DELETE CASCADE foreign key: the database deletes them."""

    __tablename__ = "badge"
    id: Mapped[int] = mapped_column(primary_key=True)
    employee_id: Mapped[int] = mapped_column(ForeignKey("employee.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(40))
    employee: Mapped[Employee] = relationship(back_populates="badges")


class Project(Base):
    __tablename__ = "project"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(80))
    members: Mapped[list[Employee]] = relationship(
        secondary=employee_project, back_populates="projects"
    )


class Person(Base):
    __tablename__ = "person"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(80))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "person",
    }


class Manager(Person):
    __tablename__ = "manager"
    id: Mapped[int] = mapped_column(ForeignKey("person.id"), primary_key=True)
    budget: Mapped[int] = mapped_column(Integer)
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "manager"}


# a correlated subquery the ORM adds to every SELECT of Department
Department.employee_count = column_property(  # type: ignore[attr-defined]
    select(func.count(Employee.id))
    .where(Employee.department_id == Department.id)
    .correlate_except(Employee)
    .scalar_subquery()
)
