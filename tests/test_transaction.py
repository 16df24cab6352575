"""Transactions, versions and snapshots: when a write becomes visible, what a rollback or a
savepoint publishes, and why no entry can carry data older than its versions claim."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, event, select, text, update
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from sa_redis_cache import QueryCache
from sa_redis_cache.invalidation import Invalidator
from tests import processes
from tests.conftest import DatabaseReads, caching_sessionmaker, dispose, engine_like, raw_client
from tests.models import Department, Employee


def employee_names(session: Session) -> list[str]:
    return list(session.scalars(select(Employee.name).order_by(Employee.id)))


def department_names(session: Session) -> list[str]:
    return list(session.scalars(select(Department.name).order_by(Department.id)))


def warm(cached: sessionmaker[Session]) -> None:
    with cached() as session:
        employee_names(session)
        department_names(session)


# -- 6. transactions -------------------------------------------------------------------------


@pytest.mark.usefixtures("seeded")
def test_rollback_publishes_nothing(
    engine: Engine, cached: sessionmaker[Session], query_cache: QueryCache
) -> None:
    warm(cached)
    invalidations = query_cache.stats()["invalidations"]
    with cached() as session:
        session.execute(update(Employee).values(name="rolled back"))
        session.rollback()
    assert query_cache.stats()["invalidations"] == invalidations
    reads = DatabaseReads(engine)
    with cached() as session:
        assert employee_names(session) == ["ann", "bob", "cid"]
    reads.close()
    assert reads.count == 0  # the entry is still alive


@pytest.mark.usefixtures("seeded")
def test_rolled_back_savepoint_publishes_nothing_of_its_own(
    engine: Engine, cached: sessionmaker[Session]
) -> None:
    warm(cached)
    with cached() as session:
        with session.begin_nested() as savepoint:
            session.execute(update(Employee).values(name="savepoint"))
            savepoint.rollback()
        session.execute(update(Department).where(Department.id == 1).values(name="outer"))
        session.commit()
    reads = DatabaseReads(engine)
    with cached() as session:
        assert employee_names(session) == ["ann", "bob", "cid"]  # still cached
        assert reads.count == 0
        assert department_names(session) == ["outer", "ops"]  # fresh
        assert reads.count == 1
    reads.close()


@pytest.mark.usefixtures("seeded")
def test_released_savepoint_joins_its_parent(engine: Engine, cached: sessionmaker[Session]) -> None:
    warm(cached)
    with cached() as session:
        with session.begin_nested():
            session.execute(update(Employee).where(Employee.id == 1).values(name="released"))
        session.commit()
    with cached() as session:
        assert employee_names(session)[0] == "released"

    warm(cached)
    with cached() as session:  # released into a parent that then rolls back: nothing
        with session.begin_nested():
            session.execute(update(Employee).where(Employee.id == 1).values(name="gone"))
        session.rollback()
    reads = DatabaseReads(engine)
    with cached() as session:
        assert employee_names(session)[0] == "released"
    reads.close()
    assert reads.count == 0


@pytest.mark.usefixtures("seeded")
def test_reads_inside_a_writing_transaction_see_its_writes_and_store_nothing(
    engine: Engine, cached: sessionmaker[Session], query_cache: QueryCache
) -> None:
    warm(cached)
    with cached() as session:
        session.execute(update(Employee).where(Employee.id == 1).values(name="mine"))
        stores = query_cache.stats()["stores"]
        assert employee_names(session)[0] == "mine"  # not the cached "ann"
        assert employee_names(session)[0] == "mine"
        assert query_cache.stats()["stores"] == stores
        assert department_names(session) == ["sales", "ops"]  # untouched table: still cached
        session.rollback()
    with cached() as session:
        assert employee_names(session)[0] == "ann"


@pytest.mark.usefixtures("seeded_mariadb")
def test_commit_in_another_process_is_seen_by_the_next_read(
    mariadb: Engine, mysql_url: URL, redis_url: str, query_cache: QueryCache
) -> None:
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    url = mysql_url.render_as_string(hide_password=False)
    with cached() as session:
        assert employee_names(session) == ["ann", "bob", "cid"]
    # the child's commit() has returned when the process exits
    processes.run(processes.rename_employee, url, redis_url, query_cache.namespace, 2, "bo")
    with cached() as session:
        assert employee_names(session) == ["ann", "bo", "cid"]


@pytest.mark.usefixtures("seeded_mariadb")
def test_commit_here_is_seen_by_another_process(
    mariadb: Engine, mysql_url: URL, redis_url: str, query_cache: QueryCache
) -> None:
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    url = mysql_url.render_as_string(hide_password=False)
    names, stats = processes.run(processes.employee_names, url, redis_url, query_cache.namespace)
    assert names == ["ann", "bob", "cid"] and stats["stores"] == 1
    with cached() as session:
        session.get(Employee, 3).name = "cy"  # type: ignore[union-attr]
        session.commit()
    names, stats = processes.run(processes.employee_names, url, redis_url, query_cache.namespace)
    assert names == ["ann", "bob", "cy"]
    assert stats["hits"] == 0


# -- 7. versions -------------------------------------------------------------------------------


@pytest.mark.usefixtures("seeded")
def test_versions_come_from_redis_and_only_move_forward(
    engine: Engine, cached: sessionmaker[Session], query_cache: QueryCache
) -> None:
    warm(cached)
    client = raw_client(query_cache)
    [key] = client.keys("{" + query_cache.namespace + "}:v:*.employee")
    seen = [int(client.get(key))]
    for name in ("x", "y"):
        with cached() as session:
            session.get(Employee, 1).name = name  # type: ignore[union-attr]
            session.commit()
        seen.append(int(client.get(key)))
    assert seen == sorted(seen) and len(set(seen)) == 3


@pytest.mark.usefixtures("seeded")
def test_a_lost_clock_never_makes_an_older_entry_look_fresh(
    engine: Engine, cached: sessionmaker[Session], query_cache: QueryCache
) -> None:
    """Redis restarted empty but the entry survived (or the clock was evicted): a new counter
    that reaches the entry's recorded version must still not revive it."""
    warm(cached)
    client = raw_client(query_cache)
    ns = "{" + query_cache.namespace + "}"
    [version_key] = client.keys(f"{ns}:v:*.employee")
    recorded = client.get(version_key)
    with Session(engine) as session:  # a write the cache could not hear about
        session.execute(update(Employee).where(Employee.id == 1).values(name="while lost"))
        session.commit()
    for key in client.keys(f"{ns}:v:*") + client.keys(f"{ns}:clock"):
        client.delete(key)
    client.hset(f"{ns}:clock", mapping={"e": "restarted", "n": int(recorded)})
    client.set(version_key, recorded)  # the new counter reached the old value
    with cached() as session:
        assert employee_names(session)[0] == "while lost"


@pytest.mark.usefixtures("seeded_mariadb")
def test_entry_records_versions_read_before_its_sql(
    mariadb: Engine, query_cache: QueryCache
) -> None:
    """The seed's bug: a write that commits after the database answered a read, and before the
    reader stores those rows, must not be lost. The reader gets the rows the database gave it
    (the write had not committed when its SQL ran); the next read gets the write.

    MariaDB only: its readers do not block writers (SQLite's rollback journal would make the
    writer wait for the reader's open statement)."""
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    with cached() as session:
        assert employee_names(session) == ["ann", "bob", "cid"]
    with cached() as session:
        assert employee_names(session) == ["ann", "bob", "cid"]  # a hit
    with cached() as writer:  # the cached entry dies: the reader below misses
        writer.get(Employee, 1).name = "first"  # type: ignore[union-attr]
        writer.commit()

    fired: list[str] = []

    def answer_then_write(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        # registered after install(): runs only for statements that reach the database
        if fired or "FROM employee" not in statement:
            return False
        fired.append(statement)
        cursor.execute(statement, parameters)  # the database answers the read ...
        with cached() as writer:  # ... then a write commits, before the rows are stored
            writer.get(Employee, 1).name = "second"  # type: ignore[union-attr]
            writer.commit()
        return True  # the statement has run

    event.listen(mariadb, "do_execute", answer_then_write)
    try:
        with cached() as reader:
            assert employee_names(reader) == ["first", "bob", "cid"]
    finally:
        event.remove(mariadb, "do_execute", answer_then_write)
    assert fired
    with cached() as session:
        assert employee_names(session) == ["second", "bob", "cid"]


# -- the two bumps of a commit -----------------------------------------------------------------
#
# A commit announces its tables (bump + "being written" mark) before the database commit and
# bumps them again after it, before commit() returns. These tests run a reader inside each window.


def rename_first_employee(cached: sessionmaker[Session], name: str) -> None:
    with cached() as writer:
        writer.get(Employee, 1).name = name  # type: ignore[union-attr]
        writer.commit()


def read_in_window(
    engine: Engine, cached: sessionmaker[Session], cache: QueryCache
) -> dict[str, Any]:
    """Read the employee names; report them, whether the read reached the database, and
    whether it stored anything."""
    stores = cache.stats()["stores"]
    reads = DatabaseReads(engine)
    try:
        with cached() as reader:
            names = employee_names(reader)
    finally:
        reads.close()
    return {
        "names": names,
        "database reads": reads.count,
        "stores": cache.stats()["stores"] - stores,
    }


@pytest.mark.usefixtures("seeded")
def test_reader_between_announcement_and_database_commit(
    engine: Engine, cached: sessionmaker[Session], query_cache: QueryCache
) -> None:
    """After the announcement the old entry is dead and the table is marked: a reader gets the
    committed rows (the write is not committed yet) from the database and stores nothing."""
    warm(cached)
    window: list[dict[str, Any]] = []

    def reader_before_database_commit(conn: Any) -> None:
        # a commit listener registered after install(): runs after the announcement, before
        # the database commit
        if not window:
            window.append(read_in_window(engine, cached, query_cache))

    event.listen(engine, "commit", reader_before_database_commit)
    try:
        rename_first_employee(cached, "new")
    finally:
        event.remove(engine, "commit", reader_before_database_commit)
    assert window == [{"names": ["ann", "bob", "cid"], "database reads": 1, "stores": 0}]
    with cached() as session:
        assert employee_names(session) == ["new", "bob", "cid"]


@pytest.mark.usefixtures("seeded")
def test_reader_between_database_commit_and_second_bump(
    engine: Engine,
    cached: sessionmaker[Session],
    query_cache: QueryCache,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between the database commit and the second bump the table is still marked: a reader gets
    the new rows from the database (never the old entry) and stores nothing; once commit() has
    returned, the next read stores the new rows and the one after is a hit."""
    warm(cached)
    window: list[dict[str, Any]] = []
    finish = Invalidator.finish

    def read_then_finish(self: Invalidator, tables: frozenset[str], token: str | None) -> None:
        if not window:
            window.append(read_in_window(engine, cached, query_cache))
        finish(self, tables, token)

    monkeypatch.setattr(Invalidator, "finish", read_then_finish)
    rename_first_employee(cached, "new")
    monkeypatch.undo()
    assert window == [{"names": ["new", "bob", "cid"], "database reads": 1, "stores": 0}]
    assert read_in_window(engine, cached, query_cache) == {
        "names": ["new", "bob", "cid"], "database reads": 1, "stores": 1
    }  # fmt: skip
    assert read_in_window(engine, cached, query_cache) == {
        "names": ["new", "bob", "cid"], "database reads": 0, "stores": 0
    }  # fmt: skip


@pytest.mark.usefixtures("seeded_mariadb")
def test_snapshot_taken_between_announcement_and_commit_is_never_stored(
    mariadb: Engine, query_cache: QueryCache
) -> None:
    """What the second bump is for. A REPEATABLE READ transaction that begins inside the window
    reads the counter after the announcement but sees the database as before the commit. Only
    the bump after the commit shows it that its rows of the written table are older than the
    versions it would store them under; without it, the old rows would be stored and served."""
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    with cached() as session:
        assert employee_names(session) == ["ann", "bob", "cid"]  # cached before the write
    reader = cached()
    began: list[bool] = []

    def begin_reader(conn: Any) -> None:
        # a commit listener registered after install(): after the announcement, before the
        # database commit
        if not began:
            began.append(True)
            # a first read (a miss) takes the counter and the database snapshot here
            assert department_names(reader) == ["sales", "ops"]

    event.listen(mariadb, "commit", begin_reader)
    try:
        rename_first_employee(cached, "new")
    finally:
        event.remove(mariadb, "commit", begin_reader)
    try:
        assert began
        assert employee_names(reader) == ["ann", "bob", "cid"]  # its snapshot: right for it
    finally:
        reader.close()
    for _ in range(2):
        with cached() as session:
            assert employee_names(session) == ["new", "bob", "cid"]


# -- 8. snapshots --------------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "READ COMMITTED"])
@pytest.mark.usefixtures("seeded_mariadb")
def test_old_snapshot_never_stores_under_new_versions(
    isolation: str, mariadb: Engine, mysql_url: URL, query_cache: QueryCache
) -> None:
    reader_engine = engine_like(mariadb, isolation_level=isolation)
    query_cache.install(mariadb)
    query_cache.install(reader_engine)
    try:
        cached_reader = caching_sessionmaker(reader_engine)
        with cached_reader() as reader:
            assert department_names(reader) == ["sales", "ops"]  # snapshot taken here
            with caching_sessionmaker(mariadb)() as writer:  # another connection commits
                writer.get(Employee, 1).name = "after snapshot"  # type: ignore[union-attr]
                writer.commit()
            seen = employee_names(reader)[0]
            if isolation == "REPEATABLE READ":
                assert seen == "ann"  # what the database says for this snapshot
            else:
                assert seen == "after snapshot"
        for factory in (cached_reader, caching_sessionmaker(mariadb)):
            with factory() as session:
                assert employee_names(session)[0] == "after snapshot"
    finally:
        query_cache.uninstall(reader_engine)
        dispose(reader_engine)


@pytest.mark.usefixtures("seeded_mariadb")
def test_old_snapshot_after_an_uncached_first_read(
    mariadb: Engine, mysql_url: URL, query_cache: QueryCache
) -> None:
    """The snapshot can be taken by a read the cache never looked up."""
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    with cached() as reader:
        reader.execute(text("SELECT COUNT(*) FROM project").execution_options(redis_cache=False))
        with cached() as writer:
            writer.get(Employee, 1).name = "later"  # type: ignore[union-attr]
            writer.commit()
        assert employee_names(reader)[0] == "ann"
    with cached() as session:
        assert employee_names(session)[0] == "later"


def test_old_snapshot_on_sqlite(tmp_path: Any, query_cache: QueryCache) -> None:
    from tests.conftest import seed, sqlite_engine_at
    from tests.models import Base

    engine = sqlite_engine_at(tmp_path / "snap.db")
    with engine.connect() as conn:  # WAL: a reader keeps its snapshot while a writer commits
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    Base.metadata.create_all(engine)
    seed(engine)
    query_cache.install(engine)
    cached = caching_sessionmaker(engine)
    with cached() as reader:
        reader.connection().exec_driver_sql("BEGIN")  # a real read transaction in pysqlite
        assert department_names(reader) == ["sales", "ops"]
        with cached() as writer:
            writer.get(Employee, 1).name = "sqlite later"  # type: ignore[union-attr]
            writer.commit()
        assert employee_names(reader)[0] == "ann"  # the reader's snapshot
    with cached() as session:
        assert employee_names(session)[0] == "sqlite later"
    engine.dispose()


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "one phase"])
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
@pytest.mark.usefixtures("seeded_mariadb")
def test_two_phase_transactions(
    outcome: str, prepared: bool, mariadb: Engine, query_cache: QueryCache
) -> None:
    """An XA transaction publishes its writes at its commit (after XA PREPARE or in one phase)
    and nothing at its rollback: the cached entry stays alive. Between the prepare and the commit
    the write is invisible, and readers get the cached rows."""
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    for _ in range(2):
        with cached() as session:
            assert employee_names(session)[0] == "ann"
    invalidations = query_cache.stats()["invalidations"]
    reads = DatabaseReads(mariadb)
    with mariadb.connect() as conn:
        transaction = conn.begin_twophase()
        conn.execute(update(Employee.__table__).where(Employee.id == 1).values(name="xa"))
        if prepared:
            transaction.prepare()
        with cached() as session:
            assert employee_names(session)[0] == "ann"
        assert reads.count == 0  # a hit: the write is not published before its commit
        getattr(transaction, outcome)()
    with cached() as session:
        assert employee_names(session)[0] == ("xa" if outcome == "commit" else "ann")
    reads.close()
    if outcome == "rollback":
        assert reads.count == 0  # the entry outlived the rollback
        assert query_cache.stats()["invalidations"] == invalidations
