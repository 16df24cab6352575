"""Nothing from the cache's own code ever reaches the application.

An internal error on a read bypasses the cache; on a write, or a statement the cache cannot
classify, the statement counts as writing every table. Either way the application gets what the
database says, the error is counted and logged once per shape, and no process is served stale
rows. Proven here by forcing an error into each hook and into the work behind it, and by running
statement shapes the library was never written for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

import sa_redis_cache.reads
from sa_redis_cache import QueryCache
from sa_redis_cache.tables import StatementKind, TableDetector
from sa_redis_cache.wiring import EngineWiring
from tests.conftest import (
    DatabaseReads,
    caching_sessionmaker,
    dispose,
    engine_like,
    unique_namespace,
)
from tests.models import Department, Employee


def names(factory: sessionmaker[Session]) -> list[str]:
    with factory() as session:
        return list(session.scalars(select(Employee.name).order_by(Employee.id)))


def wiring_of(cache: QueryCache, engine: Engine) -> EngineWiring:
    return cache._engines[engine]


# -- the crashes SQLAlchemy's own test suite found -------------------------------------------


@pytest.mark.usefixtures("seeded")
def test_orm_insert_returning_loaded_through_from_statement(
    engine: Engine, cached: sessionmaker[Session], query_cache: QueryCache
) -> None:
    """``from_statement(insert(...).returning(Entity))`` compiles to a statement with no table
    of its own; its INSERT must still be seen as a write of ``employee``."""
    before = names(cached)
    assert names(cached) == before  # cached
    with cached() as session:
        statement = insert(Employee).values(id=9, name="returned", department_id=1)
        [new] = session.scalars(
            select(Employee).from_statement(statement.returning(Employee))
        ).all()
        assert new.name == "returned"
        session.commit()
    assert names(cached) == [*before, "returned"]
    assert query_cache.stats()["errors"] == 0


@pytest.mark.usefixtures("seeded")
def test_session_invalidate_then_carry_on(
    cached: sessionmaker[Session], query_cache: QueryCache
) -> None:
    """``Session.invalidate()`` discards the connection mid-transaction; the cache's rollback
    hook must not touch the invalidated connection (that reconnects and raises)."""
    with cached() as session:
        session.get(Employee, 1).name = "unsaved"  # type: ignore[union-attr]
        session.flush()
        connection = session.connection()
        pooled = connection.connection
        session.invalidate()
        assert connection.closed and not pooled.is_valid
        assert names(cached)[0] == "ann"
        assert session.scalars(select(Employee.name).order_by(Employee.id)).first() == "ann"
    assert query_cache.stats()["errors"] == 0


# -- a forced error in each hook, and in the work behind them --------------------------------


def boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("forced fault")


# what to break: (object holding it, attribute); "" is the wiring itself, "reads:" the module
FAULTS: dict[str, tuple[str, str]] = {
    "hook do_execute": ("", "_on_execute"),
    "hook do_execute_no_params": ("", "_on_execute_no_params"),
    "hook after_cursor_execute": ("", "_after_execute"),
    "hook begin": ("", "_on_begin"),
    "hook savepoint": ("", "_on_savepoint"),
    "hook release_savepoint": ("", "_on_release_savepoint"),
    "hook rollback_savepoint": ("", "_on_rollback_savepoint"),
    "hook commit": ("", "_on_commit"),
    "hook rollback": ("", "_on_rollback"),
    "hook begin_twophase": ("", "_on_begin_twophase"),
    "hook commit_twophase": ("", "_on_commit_twophase"),
    "hook rollback_twophase": ("", "_on_rollback_twophase"),
    "table detection": ("detector", "plan"),
    "key building": ("keys", "entry"),
    "read path": ("reads", "serve"),
    "store": ("reads", "store_after_execute"),
    "entry decoding": ("reads:", "decode_payload"),
    "entry encoding": ("reads:", "encode_entry"),
    "cascades": ("cascades", "expand"),
    "announce": ("invalidator", "announce"),
    "finish": ("invalidator", "finish"),
    "publish": ("invalidator", "publish"),
}
# Faults that stop this process from telling Redis about a write at all: like a Redis that only
# this writer cannot reach (the README's fault table), other processes are told once this
# process delivers the bump, at its next read after the fault is gone. This process itself never
# serves stale rows meanwhile.
SILENCES_THE_WRITER = {"publish"}


@pytest.fixture
def two_processes(engine: Engine, redis_url: str) -> Iterator[tuple[QueryCache, Any]]:
    """This process's cache on ``engine``, and the sessions of another "process": its own
    engine and cache on the same database and namespace. Short write leases, so that the marks
    of a commit whose finish() was lost expire within the test."""
    namespace = unique_namespace()
    here = QueryCache.from_url(redis_url, namespace=namespace, write_lease=0.5)
    here.install(engine)
    other_engine = create_engine(engine.url)
    other = QueryCache.from_url(redis_url, namespace=namespace, write_lease=0.5)
    other.install(other_engine)
    yield here, caching_sessionmaker(other_engine)
    other.uninstall(other_engine)
    other_engine.dispose()
    here.uninstall(engine)
    here.clear()


def run_every_kind_of_work(engine: Engine, cached: sessionmaker[Session], check: Any) -> None:
    """Reads, ORM commits, savepoints released and rolled back, a rollback, an autocommit write,
    text SQL without parameters and (on MariaDB) a two-phase commit; ``check`` after each."""
    check()
    with cached() as session:
        session.get(Employee, 1).name = "orm"  # type: ignore[union-attr]
        session.commit()
    check()
    with cached() as session:
        with session.begin_nested():
            session.execute(update(Employee).where(Employee.id == 2).values(name="released"))
        session.commit()
    check()
    with cached() as session:
        savepoint = session.begin_nested()
        session.execute(update(Employee).where(Employee.id == 3).values(name="never"))
        savepoint.rollback()
        session.execute(update(Employee).where(Employee.id == 1).values(name="outer"))
        session.commit()
    check()
    with cached() as session:
        session.execute(update(Employee).values(name="rolled back"))
        session.rollback()
    check()
    with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(update(Employee.__table__).where(Employee.id == 2).values(name="auto"))
    check()
    with engine.begin() as conn:  # do_execute_no_params
        raw = conn.execution_options(no_parameters=True)
        raw.exec_driver_sql("UPDATE employee SET name = 'driver' WHERE id = 3")
    check()
    if engine.dialect.name != "sqlite":
        with engine.connect() as conn:
            transaction = conn.begin_twophase()
            conn.execute(update(Employee.__table__).where(Employee.id == 1).values(name="xa"))
            transaction.prepare()
            transaction.commit()
        check()
        with engine.connect() as conn:
            transaction = conn.begin_twophase()
            conn.execute(update(Employee.__table__).where(Employee.id == 1).values(name="no"))
            transaction.rollback()
        check()


@pytest.mark.parametrize(
    ("engine", "fault"),
    [
        (database, fault)
        for database in ("mariadb", "sqlite")
        for fault in FAULTS
        if database == "mariadb" or "twophase" not in fault  # SQLite has no two-phase commit
    ],
    indirect=["engine"],
)
@pytest.mark.usefixtures("seeded")
def test_a_forced_error_never_reaches_the_application(
    fault: str,
    engine: Engine,
    two_processes: tuple[QueryCache, sessionmaker[Session]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    query_cache, observer = two_processes
    cached, plain = caching_sessionmaker(engine), sessionmaker(engine)
    wiring = wiring_of(query_cache, engine)
    for factory in (cached, cached, observer, observer):  # warm both caches
        names(factory)
    holder, attribute = FAULTS[fault]
    target: Any = wiring
    if holder == "reads:":
        target = sa_redis_cache.reads
    elif holder:
        target = getattr(wiring, holder)

    def check() -> None:
        truth = names(plain)
        assert names(cached) == truth, "this process was served stale rows"
        if fault not in SILENCES_THE_WRITER:
            assert names(observer) == truth, "another process was served stale rows"

    with caplog.at_level(logging.WARNING, logger="sa_redis_cache"), monkeypatch.context() as m:
        m.setattr(target, attribute, boom)
        run_every_kind_of_work(engine, cached, check)
        warnings = len(caplog.records)
        for _ in range(3):  # the same failures again: counted, not logged again
            names(cached)
        assert len(caplog.records) == warnings
    errors = query_cache.stats()["errors"]
    assert errors > 0, "the fault was never reached: the test proves nothing"
    assert any("forced fault" in r.getMessage() for r in caplog.records)

    # the fault is gone: right rows everywhere, and the cache serves hits again
    truth = names(plain)
    deadline = time.monotonic() + 10  # write marks of a lost finish() live for the lease
    hits = query_cache.stats()["hits"]
    while query_cache.stats()["hits"] == hits:
        assert names(cached) == truth
        assert time.monotonic() < deadline, query_cache.stats()
    assert names(observer) == truth


# -- statement shapes the library was never written for --------------------------------------


@pytest.mark.parametrize(
    ("statement", "changes_employee"),
    [
        ("SET STATEMENT max_statement_time = 10 FOR UPDATE employee SET name = 'x'", True),
        ("/* a comment first */ UPDATE employee SET name = 'x' WHERE id = 1", True),
        ("# a hash comment\nUPDATE employee SET name = 'x' WHERE id = 1", True),
        ("UPDATE employee SET name = 'x' ORDER BY id LIMIT 1", True),
        ("DELETE FROM employee_project RETURNING employee_id", False),
        ("INSERT INTO department (id, name) VALUES (7, 'r') RETURNING id", False),
        ("REPLACE INTO employee (id, name, department_id) VALUES (1, 'x', 1)", True),
        ("INSERT INTO employee (id, name, department_id) VALUES (1, 'a', 1) "
         "ON DUPLICATE KEY UPDATE name = 'x'", True),
        ("UPDATE employee e JOIN department d ON d.id = e.department_id SET e.name = 'x'", True),
        ("DELETE e FROM employee e JOIN badge b ON b.employee_id = e.id", True),
        ("CREATE TEMPORARY TABLE scratch AS SELECT * FROM employee", False),
        ("DO 1 + 1", False),
        ("ANALYZE TABLE employee", False),
        ("CHECKSUM TABLE employee", False),
        ("VALUES (1), (2)", False),
        ("WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
         "SELECT * FROM n", False),
        ("SELECT JSON_OBJECT('k', name) FROM employee", False),
        ("SELECT name FROM employee USE INDEX (PRIMARY) WHERE id > 0", False),
        ("SELECT SQL_NO_CACHE STRAIGHT_JOIN name FROM employee", False),
        ("SELECT /*+ MAX_EXECUTION_TIME(100) */ name FROM employee", False),
        ("SELECT name FROM employee WHERE id IN (SELECT employee_id FROM badge) "
         "LOCK IN SHARE MODE", False),
        ("SELECT NEXTVAL(seq)", False),
        ("SELECT LAST_INSERT_ID(), FOUND_ROWS(), ROW_COUNT(), CONNECTION_ID(), UTC_TIMESTAMP()",
         False),
        ("SELECT GET_LOCK('sa_redis_cache_test', 0), RELEASE_LOCK('sa_redis_cache_test')", False),
        ("HANDLER employee OPEN", False),
        ("SELECT 'ünïcödé ✓', x'00ff', _utf8mb4'x' COLLATE utf8mb4_bin", False),
        ("SELECT 1 FROM DUAL WHERE 1 = 0", False),
        ("SET @x = (SELECT COUNT(*) FROM employee)", False),
        ("SELECT @x", False),
        ("XA RECOVER", False),
        ("SHOW CREATE TABLE employee", False),
        ("EXPLAIN SELECT * FROM employee", False),
    ],
)  # fmt: skip
def test_statement_shapes_never_seen_are_served_right(
    statement: str,
    changes_employee: bool,
    mariadb: Engine,
    seeded_mariadb: Engine,
    query_cache: QueryCache,
) -> None:
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    with mariadb.begin() as conn:
        conn.exec_driver_sql("CREATE SEQUENCE IF NOT EXISTS seq")
    try:
        before = names(cached)
        assert names(cached) == before  # cached
        with cached() as session:
            result = session.execute(text(statement))
            if result.returns_rows:
                result.all()
            if statement.startswith("HANDLER"):
                session.execute(text("HANDLER employee CLOSE"))
            session.commit()
        after = names(cached)
        assert after == names(sessionmaker(mariadb))
        assert (after != before) is changes_employee
        assert query_cache.stats()["errors"] == 0  # handled by design, not by the safety net
    finally:
        with mariadb.begin() as conn:
            conn.exec_driver_sql("DROP SEQUENCE IF EXISTS seq")


def test_a_volatile_read_is_never_stored(mariadb: Engine, query_cache: QueryCache) -> None:
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    with mariadb.begin() as conn:
        conn.exec_driver_sql("CREATE SEQUENCE IF NOT EXISTS seq")
    try:
        with cached() as session:
            first = session.execute(text("SELECT NEXTVAL(seq)")).scalar()
        with cached() as session:
            assert session.execute(text("SELECT NEXTVAL(seq)")).scalar() == first + 1
        assert query_cache.stats()["stores"] == 0
    finally:
        with mariadb.begin() as conn:
            conn.exec_driver_sql("DROP SEQUENCE IF EXISTS seq")


@pytest.mark.usefixtures("seeded_mariadb")
def test_read_uncommitted_rows_are_never_stored(
    mariadb: Engine, mysql_url: Any, query_cache: QueryCache
) -> None:
    """A dirty read may see rows that are then rolled back: it must never reach the cache."""
    dirty = engine_like(mariadb, isolation_level="READ UNCOMMITTED")
    query_cache.install(mariadb)
    query_cache.install(dirty)
    try:
        with Session(mariadb) as writer:
            writer.execute(update(Employee).where(Employee.id == 1).values(name="uncommitted"))
            for _ in range(2):
                assert names(caching_sessionmaker(dirty))[0] == "uncommitted"
            writer.rollback()
        assert query_cache.stats()["stores"] == 0
        assert names(caching_sessionmaker(dirty))[0] == "ann"
        assert names(caching_sessionmaker(mariadb))[0] == "ann"
    finally:
        query_cache.uninstall(dirty)
        dispose(dirty)


@pytest.mark.parametrize(
    "statement",
    [
        "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
        "SET autocommit = 1",
        "USE information_schema",
    ],
)
@pytest.mark.usefixtures("seeded_mariadb")
def test_a_connection_changed_behind_the_cache_is_left_alone(
    statement: str, mariadb: Engine, mysql_url: Any, query_cache: QueryCache
) -> None:
    """After SQL that changes what later SQL on that connection means, the connection reads from
    the database and every write on it invalidates everything at once, until it is closed."""
    engine = engine_like(mariadb, pool_size=1, max_overflow=0)  # one pooled connection
    query_cache.install(engine)
    query_cache.install(mariadb)
    schema = mysql_url.database
    try:
        cached = caching_sessionmaker(engine)
        names(cached)
        names(cached)
        with cached() as session:
            session.execute(text(statement))
            session.commit()
        reads = DatabaseReads(engine)
        for _ in range(2):
            with cached() as session:  # the same pooled connection
                session.execute(text(f"SELECT name FROM {schema}.department")).all()
        assert reads.count == 2
        reads.close()
        other = caching_sessionmaker(mariadb)
        with other() as session:
            assert session.scalars(select(Department.name).order_by(Department.id)).all() == [
                "sales",
                "ops",
            ]
        with engine.connect() as conn:  # no commit(): SET autocommit = 1 made it stick anyway
            conn.execute(text(f"UPDATE {schema}.department SET name = 'moved' WHERE id = 1"))
            if "autocommit" not in statement:
                conn.commit()
        with other() as session:
            assert session.scalars(select(Department.name).order_by(Department.id)).first() == (
                "moved"
            )
    finally:
        query_cache.uninstall(engine)
        dispose(engine)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(
            st.sampled_from(
                [
                    "SELECT",
                    "INSERT",
                    "UPDATE",
                    "DELETE",
                    "FROM",
                    "INTO",
                    "SET",
                    "WHERE",
                    "(",
                    ")",
                    ",",
                    "*",
                    "employee",
                    "e.name",
                    "JOIN",
                    "ON",
                    "=",
                    "%s",
                    "%(p)s",
                    "'x'",
                    "1",
                    "WITH",
                    "AS",
                    "UNION",
                    "FOR",
                    "STATEMENT",
                    "USE",
                    "VALUES",
                    "RETURNING",
                    "LIMIT",
                    "ORDER BY",
                    "`t`",
                    "/*",
                    "*/",
                    "--",
                    "#",
                    ";",
                    "\n",
                    "REPLACE",
                    "CALL",
                    "CREATE",
                    "TEMPORARY",
                    "TABLE",
                    "DROP",
                    "ALTER",
                    "NOW()",
                ]
            ),
            max_size=25,
        ).map(" ".join),
    )
)
def test_table_detection_never_raises(sql: str) -> None:
    """Whatever the text, the detector answers, and its answer is a safe one: a write that
    names no table invalidates every table."""
    plan = TableDetector("mysql", "shop").plan(sql)
    if plan.kind is StatementKind.WRITE:
        assert plan.tables
