"""Writes: every committed write through an installed engine invalidates what it changed, whatever
API made it. Each case warms a cached read, writes, and checks the next read is fresh."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from sa_redis_cache import QueryCache
from sa_redis_cache.tables import TableDetector
from tests.conftest import SYNC_FLAVORS, DatabaseReads, caching_sessionmaker
from tests.models import Badge, Department, Employee, Manager, Person, Project, employee_project

# not yet run in the async flavors: these tests inspect Redis through the cache's own client
pytestmark = pytest.mark.flavors(*SYNC_FLAVORS)


Read = Callable[[Session], Any]
Write = Callable[[Session, Engine], None]


def names(session: Session) -> list[str]:
    return list(session.scalars(select(Employee.name).order_by(Employee.id)))


def department_names(session: Session) -> list[str]:
    return list(session.scalars(select(Department.name).order_by(Department.id)))


def project_members(session: Session) -> list[str]:
    return sorted(e.name for e in session.get(Project, 1).members)  # type: ignore[union-attr]


def managers(session: Session) -> list[tuple[str, int]]:
    return [(m.name, m.budget) for m in session.scalars(select(Manager).order_by(Manager.id))]


def badge_labels(session: Session) -> list[str]:
    return list(session.scalars(select(Badge.label).order_by(Badge.id)))


def orm_add(s: Session, e: Engine) -> None:
    s.add(Employee(id=7, name="new", department_id=2))
    s.commit()


def orm_update(s: Session, e: Engine) -> None:
    s.get(Employee, 2).name = "robert"  # type: ignore[union-attr]
    s.commit()


def orm_delete(s: Session, e: Engine) -> None:
    s.delete(s.get(Employee, 3))
    s.commit()


def orm_inheritance_subclass_column(s: Session, e: Engine) -> None:
    s.get(Manager, 1).budget = 99  # type: ignore[union-attr]
    s.commit()


def orm_inheritance_base_column(s: Session, e: Engine) -> None:
    s.get(Person, 1).name = "megan"  # type: ignore[union-attr]
    s.commit()


def orm_many_to_many_append(s: Session, e: Engine) -> None:
    cid, apollo = s.get(Employee, 3), s.get(Project, 1)
    assert cid is not None and apollo is not None
    cid.projects.append(apollo)
    s.commit()


def orm_bulk_update(s: Session, e: Engine) -> None:
    s.execute(update(Employee).where(Employee.id == 1).values(name="annie"))
    s.commit()


def orm_bulk_insert(s: Session, e: Engine) -> None:
    s.execute(insert(Employee).values(id=8, name="bulk", department_id=1))
    s.commit()


def orm_bulk_delete(s: Session, e: Engine) -> None:
    s.execute(delete(Badge))
    s.commit()


def legacy_query_update(s: Session, e: Engine) -> None:
    s.query(Employee).filter(Employee.id == 2).update({"name": "bobby"})
    s.commit()


def legacy_query_delete(s: Session, e: Engine) -> None:
    s.query(Badge).delete()
    s.commit()


def core_update(s: Session, e: Engine) -> None:
    with e.begin() as conn:
        conn.execute(update(Employee.__table__).values(name="core"))


def core_many_to_many_delete(s: Session, e: Engine) -> None:
    with e.begin() as conn:
        conn.execute(employee_project.delete().where(employee_project.c.employee_id == 2))


def text_update(s: Session, e: Engine) -> None:
    s.execute(text("UPDATE employee SET name = :n WHERE id = 3"), {"n": "text"})
    s.commit()


def driver_sql_insert(s: Session, e: Engine) -> None:
    with e.begin() as conn:
        conn.exec_driver_sql("INSERT INTO department (id, name) VALUES (5, 'driver')")


WRITES: dict[str, tuple[Write, Read]] = {
    "orm insert": (orm_add, names),
    "orm update": (orm_update, names),
    "orm delete": (orm_delete, names),
    "inheritance subclass table": (orm_inheritance_subclass_column, managers),
    "inheritance base table": (orm_inheritance_base_column, managers),
    "many-to-many secondary": (orm_many_to_many_append, project_members),
    "orm bulk update": (orm_bulk_update, names),
    "orm bulk insert": (orm_bulk_insert, names),
    "orm bulk delete": (orm_bulk_delete, badge_labels),
    "Query.update": (legacy_query_update, names),
    "Query.delete": (legacy_query_delete, badge_labels),
    "core update": (core_update, names),
    "core secondary delete": (core_many_to_many_delete, project_members),
    "text update": (text_update, names),
    "exec_driver_sql insert": (driver_sql_insert, department_names),
}


def expected_after(write: Write, read: Read, engine: Engine) -> Any:
    """What the read returns after the write, asked of the database with no cache at all."""
    with Session(engine) as session:
        return read(session)


@pytest.mark.parametrize("case", WRITES)
@pytest.mark.usefixtures("seeded")
def test_committed_write_invalidates(
    case: str, engine: Engine, cached: sessionmaker[Session], query_cache: QueryCache
) -> None:
    write, read = WRITES[case]
    with cached() as session:
        before = read(session)
    with cached() as session:
        assert read(session) == before  # now served from the cache
    hits = query_cache.stats()["hits"]
    assert hits >= 1

    with cached() as session:
        write(session, engine)

    reads = DatabaseReads(engine)
    with cached() as session:
        after = read(session)
    reads.close()
    assert after != before
    assert after == expected_after(write, read, engine)
    assert reads.count >= 1


def test_write_of_unknown_reach_invalidates_everything(
    mariadb: Engine, seeded_mariadb: Engine, query_cache: QueryCache
) -> None:
    """The parser cannot see inside EXECUTE IMMEDIATE: the write could touch anything, so
    every entry of the namespace dies, the untouched table's too."""
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    with cached() as session:
        before = (names(session), department_names(session))
    statement = "EXECUTE IMMEDIATE 'UPDATE employee SET name = ''x'' WHERE id = 1'"
    assert TableDetector("mysql", None).plan(statement).tables == frozenset({"*"})
    with mariadb.begin() as conn:
        conn.exec_driver_sql(statement)
    reads = DatabaseReads(mariadb)
    with cached() as session:
        assert names(session)[0] == "x"
        assert department_names(session) == before[1]
    reads.close()
    assert reads.count == 2  # both entries were dead, the untouched table's too


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE department ADD COLUMN note VARCHAR(10) DEFAULT 'n'",
        "TRUNCATE TABLE badge",
        "CREATE INDEX ix_badge_label ON badge (label)",
        "RENAME TABLE project TO project_old, project_old TO project",
    ],
)
def test_ddl_invalidates(
    statement: str, mariadb: Engine, seeded_mariadb: Engine, query_cache: QueryCache
) -> None:
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    reads_of = {
        "department": lambda s: s.execute(text("SELECT * FROM department ORDER BY id")).all(),
        "badge": lambda s: s.execute(text("SELECT * FROM badge")).all(),
        "project": lambda s: s.execute(text("SELECT * FROM project")).all(),
    }
    table = next(t for t in reads_of if t in statement)
    with cached() as session:
        before = reads_of[table](session)
    try:
        with mariadb.begin() as conn:
            conn.exec_driver_sql(statement)
        reads = DatabaseReads(mariadb)
        with cached() as session:
            after = reads_of[table](session)
        reads.close()
        assert reads.count == 1
        if "ALTER" in statement:
            assert len(after[0]) == len(before[0]) + 1
        if "TRUNCATE" in statement:
            assert before and not after
    finally:
        with mariadb.begin() as conn:
            if "ALTER" in statement:
                conn.exec_driver_sql("ALTER TABLE department DROP COLUMN note")
            if "INDEX" in statement:
                conn.exec_driver_sql("DROP INDEX ix_badge_label ON badge")


def test_database_cascade_invalidates_child_tables(
    mariadb: Engine, seeded_mariadb: Engine, query_cache: QueryCache
) -> None:
    """Deleting an employee makes the database delete her badges (ON DELETE CASCADE); no
    statement names the badge table, yet its cached reads must die."""
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    with cached() as session:
        assert badge_labels(session) == ["gold"]
        assert project_members(session) == ["ann", "bob"]
    with mariadb.begin() as conn:
        conn.exec_driver_sql("DELETE FROM employee WHERE id = 1")
    with cached() as session:
        assert badge_labels(session) == []
        assert project_members(session) == ["bob"]


def test_cascade_on_sqlite(tmp_path: Any, query_cache: QueryCache) -> None:
    from tests.conftest import sqlite_engine_at
    from tests.models import Base

    engine = sqlite_engine_at(tmp_path / "cascade.db")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Department(id=1, name="d"))
        session.add(Employee(id=1, name="e", department_id=1, badges=[Badge(id=1, label="b")]))
        session.commit()
    query_cache.install(engine)
    cached = caching_sessionmaker(engine)
    with cached() as session:
        assert badge_labels(session) == ["b"]
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM employee")
    with cached() as session:
        assert badge_labels(session) == []
    engine.dispose()


def test_write_through_uninstalled_engine_is_the_documented_limit(
    mariadb: Engine, seeded_mariadb: Engine, query_cache: QueryCache, mysql_url: Any
) -> None:
    """Writes the cache cannot see need ``invalidate()``: proven here so the README stays true."""
    from sqlalchemy import create_engine

    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    with cached() as session:
        assert session.scalar(select(func.count()).select_from(Project)) == 1
    outsider = create_engine(mysql_url)
    with outsider.begin() as conn:
        conn.exec_driver_sql("INSERT INTO project (id, title) VALUES (2, 'outside')")
    outsider.dispose()
    with cached() as session:
        assert session.scalar(select(func.count()).select_from(Project)) == 1  # not seen
    query_cache.invalidate("project")
    with cached() as session:
        assert session.scalar(select(func.count()).select_from(Project)) == 2


def test_autocommit_writes_are_published_when_they_run(
    mariadb: Engine, seeded_mariadb: Engine, query_cache: QueryCache, mysql_url: Any
) -> None:
    """Under AUTOCOMMIT a write is visible the moment it runs, long before any commit()."""
    from sqlalchemy import create_engine

    autocommit = create_engine(mysql_url, isolation_level="AUTOCOMMIT")
    query_cache.install(mariadb)
    query_cache.install(autocommit)
    try:
        cached = caching_sessionmaker(mariadb)
        with cached() as session:
            assert names(session)[0] == "ann"
        with autocommit.connect() as conn:
            conn.execute(update(Employee.__table__).where(Employee.id == 1).values(name="auto"))
            with cached() as session:  # the connection has not even been closed yet
                assert names(session)[0] == "auto"
    finally:
        query_cache.uninstall(autocommit)
        autocommit.dispose()


def test_write_naming_another_schema_reaches_engines_on_that_schema(
    mariadb: Engine, query_cache: QueryCache, demo_mysql_url: Any
) -> None:
    """Version keys name the server and the schema-qualified table: a write to ``other.t``
    through an engine whose default schema is another one invalidates the reads of ``t`` by an
    engine connected to ``other``."""
    from sqlalchemy import create_engine

    other_schema = demo_mysql_url.database
    other = create_engine(demo_mysql_url)
    try:
        with other.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))")
            conn.exec_driver_sql("INSERT INTO t VALUES (1, 'old')")
        query_cache.install(mariadb)
        query_cache.install(other)
        statement = text("SELECT v FROM t")
        for _ in range(2):
            with caching_sessionmaker(other)() as session:
                assert session.execute(statement).scalar() == "old"
        assert query_cache.stats()["hits"] == 1
        with caching_sessionmaker(mariadb)() as session:
            session.execute(text(f"UPDATE {other_schema}.t SET v = 'new'"))
            session.commit()
        with caching_sessionmaker(other)() as session:
            assert session.execute(statement).scalar() == "new"
    finally:
        query_cache.uninstall(other)
        other.dispose()
