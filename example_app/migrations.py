"""Run the Alembic migrations on an engine (and so through its cache, if one is installed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from example_app.models import Department, Employee

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = Config(str(ALEMBIC_INI))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    config = Config(str(ALEMBIC_INI))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def seed(engine: Engine) -> None:
    """A few departments and employees, if the tables are empty."""
    with Session(engine) as session:
        if session.scalar(select(func.count()).select_from(Department)):
            return
        names = {"Engineering": ["Ada", "Grace", "Linus"], "Sales": ["Mary", "Joe"], "Ops": ["Ken"]}
        for department_name, employees in names.items():
            department = Department(name=department_name)
            department.employees = [Employee(name=n) for n in employees]
            session.add(department)
        session.commit()


def main() -> None:
    """``python -m example_app.migrations``: upgrade the configured database and seed it."""
    from example_app.settings import database_url, make_engine

    engine = make_engine(database_url())
    upgrade(engine)
    seed(engine)
    engine.dispose()


if __name__ == "__main__":
    main()
