"""Writes: every committed write through an installed engine invalidates what it changed, whatever
API made it. Each case warms a cached read, writes, and checks the next read is fresh."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Session, sessionmaker

from sa_redis_cache import QueryCache
from sa_redis_cache.tables import TableDetector
from tests.conftest import DatabaseReads, caching_sessionmaker, dispose, engine_like
from tests.models import Badge, Department, Employee, Manager, Person, Project, employee_project

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


MANY = 50
"""Rows in each many-row write below."""


def orm_insert_many_rows(s: Session, e: Engine) -> None:
    rows = [{"id": 100 + i, "name": f"many {i}", "department_id": 1} for i in range(MANY)]
    s.execute(insert(Employee), rows)
    s.commit()


def core_executemany_insert(s: Session, e: Engine) -> None:
    rows = [{"id": 100 + i, "name": f"many {i}", "department_id": 2} for i in range(MANY)]
    with e.begin() as conn:
        conn.execute(Employee.__table__.insert(), rows)


def driver_executemany_insert(s: Session, e: Engine) -> None:
    mark = "?" if e.dialect.paramstyle == "qmark" else "%s"
    rows = [(100 + i, f"driver {i}") for i in range(MANY)]
    with e.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO department (id, name) VALUES ({mark}, {mark})", rows)


def orm_update_many_rows_by_primary_key(s: Session, e: Engine) -> None:
    s.execute(update(Employee), [{"id": i, "name": f"by pk {i}"} for i in (1, 2, 3)])
    s.commit()


def core_executemany_delete(s: Session, e: Engine) -> None:
    table = employee_project
    with e.begin() as conn:
        conn.execute(
            table.delete().where(table.c.employee_id == bindparam("who")),
            [{"who": 1}, {"who": 2}],
        )


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
    "orm insert of many rows": (orm_insert_many_rows, names),
    "core executemany insert": (core_executemany_insert, names),
    "exec_driver_sql executemany insert": (driver_executemany_insert, department_names),
    "orm update of many rows by primary key": (orm_update_many_rows_by_primary_key, names),
    "core executemany delete": (core_executemany_delete, project_members),
}


def multi_table_update(s: Session, e: Engine) -> None:
    s.execute(
        text(
            "UPDATE employee e JOIN department d ON d.id = e.department_id "
            "SET e.name = CONCAT(e.name, '+'), d.name = 'both' WHERE d.id = 2"
        )
    )
    s.commit()


def multi_table_delete(s: Session, e: Engine) -> None:
    with e.begin() as conn:
        conn.exec_driver_sql(
            "DELETE ep, b FROM employee_project ep JOIN badge b ON b.employee_id = ep.employee_id "
            "WHERE ep.employee_id = 1"
        )


def replace_into(s: Session, e: Engine) -> None:
    """REPLACE deletes the old row first: its ON DELETE CASCADE children go too."""
    s.execute(text("REPLACE INTO employee (id, name, department_id) VALUES (1, 'replaced', 1)"))
    s.commit()


def on_duplicate_key_update_text(s: Session, e: Engine) -> None:
    s.execute(
        text(
            "INSERT INTO department (id, name) VALUES (1, 'dup') "
            "ON DUPLICATE KEY UPDATE name = VALUES(name)"
        )
    )
    s.commit()


def on_duplicate_key_update_construct(s: Session, e: Engine) -> None:
    statement = mysql.insert(Department).values(id=2, name="upserted")
    s.execute(statement.on_duplicate_key_update(name=statement.inserted.name))
    s.commit()


def names_and_departments(session: Session) -> Any:
    return names(session), department_names(session)


def members_and_badges(session: Session) -> Any:
    return project_members(session), badge_labels(session)


def names_badges_and_members(session: Session) -> Any:
    return names(session), badge_labels(session), project_members(session)


MARIADB_WRITES: dict[str, tuple[Write, Read]] = {
    "multi-table UPDATE": (multi_table_update, names_and_departments),
    "multi-table DELETE": (multi_table_delete, members_and_badges),
    "REPLACE (and its cascades)": (replace_into, names_badges_and_members),
    "INSERT ... ON DUPLICATE KEY UPDATE (text)": (on_duplicate_key_update_text, department_names),
    "INSERT ... ON DUPLICATE KEY UPDATE (construct)": (
        on_duplicate_key_update_construct,
        department_names,
    ),
}


def expected_after(write: Write, read: Read, engine: Engine) -> Any:
    """What the read returns after the write, asked of the database with no cache at all."""
    with Session(engine) as session:
        return read(session)


def check_write_invalidates(
    engine: Engine, cached: sessionmaker[Session], query_cache: QueryCache, write: Write, read: Read
) -> None:
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


@pytest.mark.parametrize("case", WRITES)
@pytest.mark.usefixtures("seeded")
def test_committed_write_invalidates(
    case: str, engine: Engine, cached: sessionmaker[Session], query_cache: QueryCache
) -> None:
    check_write_invalidates(engine, cached, query_cache, *WRITES[case])


@pytest.mark.parametrize("case", MARIADB_WRITES)
def test_committed_mariadb_write_invalidates(
    case: str, seeded_mariadb: Engine, query_cache: QueryCache
) -> None:
    """MySQL's own DML, run against the database: every table it changes is invalidated."""
    query_cache.install(seeded_mariadb)
    cached = caching_sessionmaker(seeded_mariadb)
    check_write_invalidates(seeded_mariadb, cached, query_cache, *MARIADB_WRITES[case])


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


def test_ddl_is_published_when_it_runs_even_if_the_transaction_then_rolls_back(
    seeded_mariadb: Engine, query_cache: QueryCache
) -> None:
    """MySQL commits DDL implicitly, with the writes that came before it in the transaction: a
    rollback afterwards undoes neither, so both are published when the DDL runs."""
    mariadb = seeded_mariadb
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    with cached() as session:
        assert (names(session), badge_labels(session)) == (["ann", "bob", "cid"], ["gold"])
    with mariadb.connect() as conn:
        conn.begin()
        conn.execute(update(Employee.__table__).where(Employee.id == 1).values(name="kept"))
        conn.exec_driver_sql("TRUNCATE TABLE badge")  # commits the UPDATE with it
        conn.rollback()  # nothing left to roll back
    with Session(mariadb) as plain:
        assert (names(plain), badge_labels(plain)) == (["kept", "bob", "cid"], [])
    with cached() as session:
        assert (names(session), badge_labels(session)) == (["kept", "bob", "cid"], [])


# ON DELETE CASCADE is test_database_cascade_invalidates_child_tables; the other rules here.
# InnoDB accepts SET DEFAULT in a table definition but refuses the write (like RESTRICT):
# SET DEFAULT is tried on SQLite only.
FK_RULES = [
    ("mariadb", "UPDATE", "CASCADE", [(20,)]),
    ("mariadb", "UPDATE", "SET NULL", [(None,)]),
    ("mariadb", "DELETE", "SET NULL", [(None,)]),
    ("sqlite", "UPDATE", "CASCADE", [(20,)]),
    ("sqlite", "UPDATE", "SET NULL", [(None,)]),
    ("sqlite", "DELETE", "SET NULL", [(None,)]),
    ("sqlite", "UPDATE", "SET DEFAULT", [(0,)]),
    ("sqlite", "DELETE", "SET DEFAULT", [(0,)]),
]


@pytest.mark.parametrize(
    ("database", "event", "rule", "child_after"),
    FK_RULES,
    ids=[f"{database}-ON {event} {rule}" for database, event, rule, _ in FK_RULES],
)
def test_foreign_key_rules_invalidate_the_child_table(
    database: str,
    event: str,
    rule: str,
    child_after: list[tuple[Any, ...]],
    query_cache: QueryCache,
    request: pytest.FixtureRequest,
    tmp_path: Any,
) -> None:
    """A write to the parent changes the child through its foreign key's rule: no statement
    names the child table, yet its cached reads must die."""
    from tests.conftest import sqlite_engine_at

    if database == "mariadb":
        engine: Engine = request.getfixturevalue("mariadb")
    else:
        engine = sqlite_engine_at(tmp_path / "rules.db")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS fk_child")
        conn.exec_driver_sql("DROP TABLE IF EXISTS fk_parent")
        conn.exec_driver_sql(
            "CREATE TABLE fk_parent (id INT PRIMARY KEY, code INT NOT NULL UNIQUE)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE fk_child (id INT PRIMARY KEY, code INT DEFAULT 0, "
            f"FOREIGN KEY (code) REFERENCES fk_parent (code) ON {event} {rule})"
        )
        conn.exec_driver_sql("INSERT INTO fk_parent VALUES (1, 10), (2, 0)")
        conn.exec_driver_sql("INSERT INTO fk_child VALUES (1, 10)")
    query_cache.install(engine)
    cached = caching_sessionmaker(engine)
    child = text("SELECT code FROM fk_child")
    try:
        for _ in range(2):
            with cached() as session:
                assert session.execute(child).all() == [(10,)]
        assert query_cache.stats()["hits"] == 1
        with engine.begin() as conn:
            if event == "UPDATE":
                conn.exec_driver_sql("UPDATE fk_parent SET code = 20 WHERE id = 1")
            else:
                conn.exec_driver_sql("DELETE FROM fk_parent WHERE id = 1")
        with cached() as session:
            assert session.execute(child).all() == child_after
    finally:
        query_cache.uninstall(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE fk_child")
            conn.exec_driver_sql("DROP TABLE fk_parent")
        if database == "sqlite":
            engine.dispose()


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

    autocommit = engine_like(mariadb, isolation_level="AUTOCOMMIT")
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
        dispose(autocommit)


def test_write_naming_another_schema_reaches_engines_on_that_schema(
    mariadb: Engine, query_cache: QueryCache, demo_mysql_url: Any
) -> None:
    """Version keys name the server and the schema-qualified table: a write to ``other.t``
    through an engine whose default schema is another one invalidates the reads of ``t`` by an
    engine connected to ``other``."""

    other_schema = demo_mysql_url.database
    other = engine_like(mariadb, demo_mysql_url)
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
        dispose(other)


def test_database_id_joins_engines_that_name_one_server_differently(
    seeded_mariadb: Engine, query_cache: QueryCache, mysql_url: Any
) -> None:
    """127.0.0.1 and 127.1 reach one MariaDB but make two default server identities: without
    ``database_id`` a write through one would not reach the readers of the other. Given the same
    ``database_id``, both engines share one set of version keys."""

    from sa_redis_cache.keys import server_identity

    mariadb = seeded_mariadb
    alias = engine_like(mariadb, mysql_url.set(host="127.1"))
    assert server_identity(alias.url) != server_identity(mariadb.url)
    query_cache.install(mariadb, database_id="shop-primary")
    query_cache.install(alias, database_id="shop-primary")
    try:
        for _ in range(2):
            with caching_sessionmaker(mariadb)() as session:
                assert names(session) == ["ann", "bob", "cid"]
        assert query_cache.stats()["hits"] == 1
        with caching_sessionmaker(alias)() as session:
            session.get(Employee, 1).name = "through the alias"  # type: ignore[union-attr]
            session.commit()
        with caching_sessionmaker(mariadb)() as session:
            assert names(session) == ["through the alias", "bob", "cid"]
    finally:
        query_cache.uninstall(alias)
        dispose(alias)
