"""Reads: every kind of ORM read is served from the cache, and a hit is indistinguishable from a
database read (rows, Python types, identity map, autoflush)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import exists, func, literal_column, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker, subqueryload

from sa_redis_cache import QueryCache
from tests.conftest import DatabaseReads, cache_with, caching_sessionmaker
from tests.models import Department, Employee, Manager, Person, Project

Read = Callable[[Session], Any]


def snapshot(value: Any) -> Any:
    """A plain-data picture of what a read returned, ORM objects included."""
    if isinstance(value, list | tuple):
        return [snapshot(v) for v in value]
    if hasattr(value, "__table__"):
        return {c.key: getattr(value, c.key) for c in value.__mapper__.column_attrs}
    if hasattr(value, "_mapping"):
        return snapshot(tuple(value))
    return value


READS: dict[str, Read] = {
    "select entities": lambda s: s.scalars(select(Employee).order_by(Employee.id)).all(),
    "select columns": lambda s: s.execute(select(Employee.name, Employee.salary)).all(),
    "session.get": lambda s: s.get(Employee, 1),
    "query.all": lambda s: s.query(Employee).order_by(Employee.id).all(),
    "query.first": lambda s: s.query(Employee).filter(Employee.name == "bob").first(),
    "query.one": lambda s: s.query(Department).filter_by(name="ops").one(),
    "query.count": lambda s: s.query(Employee).count(),
    "aggregate": lambda s: s.execute(
        select(Employee.department_id, func.count(), func.max(Employee.salary))
        .group_by(Employee.department_id)
        .order_by(Employee.department_id)
    ).all(),
    "join": lambda s: s.execute(
        select(Employee, Department).join(Employee.department).order_by(Employee.id)
    ).all(),
    "subquery": lambda s: s.scalars(
        select(Employee).where(
            Employee.department_id.in_(select(Department.id).where(Department.name == "sales"))
        )
    ).all(),
    "cte": lambda s: s.execute(
        select(Department.name).join(
            cte := select(Employee.department_id).distinct().cte(),
            cte.c.department_id == Department.id,
        )
    ).all(),
    "exists": lambda s: s.scalar(select(exists().where(Employee.name == "ann"))),
    "column_property": lambda s: [
        (d.name, d.employee_count) for d in s.scalars(select(Department).order_by(Department.id))
    ],
    "joined inheritance": lambda s: s.scalars(select(Person).order_by(Person.id)).all(),
    "joined inheritance subclass": lambda s: s.scalars(select(Manager)).all(),
    "lazy load": lambda s: [p.title for p in s.get(Employee, 1).projects],
    "many-to-many": lambda s: [e.name for e in s.get(Project, 1).members],
    "selectinload": lambda s: [
        (d.name, sorted(e.name for e in d.employees))
        for d in s.scalars(select(Department).options(selectinload(Department.employees)))
    ],
    "joinedload": lambda s: [
        (e.name, e.department.name)
        for e in s.scalars(select(Employee).options(joinedload(Employee.department)))
    ],
    "subqueryload": lambda s: [
        (d.name, len(d.employees))
        for d in s.query(Department).options(subqueryload(Department.employees))
    ],
    "text": lambda s: s.execute(text("SELECT name FROM employee ORDER BY id")).all(),
}


@pytest.mark.parametrize("name", READS)
@pytest.mark.usefixtures("seeded")
def test_second_read_is_served_from_cache_with_identical_result(
    name: str, cached: sessionmaker[Session], db_reads: DatabaseReads, query_cache: QueryCache
) -> None:
    read = READS[name]
    with cached() as session:
        first = snapshot(read(session))
    assert db_reads.count > 0
    stores = query_cache.stats()["stores"]
    assert stores > 0

    db_reads.reset()
    with cached() as session:
        second = snapshot(read(session))
    assert second == first
    assert db_reads.count == 0, db_reads.statements
    assert query_cache.stats()["hits"] >= 1


@pytest.mark.usefixtures("seeded")
def test_hit_returns_same_python_types(
    cached: sessionmaker[Session], db_reads: DatabaseReads
) -> None:
    def read() -> tuple[Any, ...]:
        with cached() as session:
            ann = session.get(Employee, 1)
            assert ann is not None
            return (ann.salary, ann.hired_at, ann.birthday, ann.photo, ann.level, ann.extra,
                    session.get(Employee, 2).salary)  # fmt: skip

    from_db = read()
    db_reads.reset()
    from_cache = read()
    assert db_reads.count == 0
    assert from_cache == from_db
    assert [type(v) for v in from_cache] == [type(v) for v in from_db]


@pytest.mark.usefixtures("seeded")
def test_hit_keeps_identity_map(cached: sessionmaker[Session], db_reads: DatabaseReads) -> None:
    def reads(session: Session) -> tuple[Any, Any, list[Employee]]:
        ann = session.get(Employee, 1)
        again = session.scalars(select(Employee).where(Employee.name == "ann")).one()
        via_join = session.execute(select(Employee).join(Employee.department)).scalars().all()
        return ann, again, list(via_join)

    with cached() as session:
        reads(session)
    db_reads.reset()
    with cached() as session:
        ann, again, via_join = reads(session)
        assert again is ann
        assert any(e is ann for e in via_join)
        ann.name = "changed in memory"
        # a hit of an object already in the identity map does not overwrite its state
        assert session.get(Employee, 1).name == "changed in memory"  # type: ignore[union-attr]
    assert db_reads.count == 0


@pytest.mark.usefixtures("seeded")
def test_autoflush_runs_before_a_cached_query(
    cached: sessionmaker[Session], db_reads: DatabaseReads
) -> None:
    with cached() as session:
        assert session.query(Employee).count() == 3  # now cached
    with cached() as session:
        session.add(Employee(id=9, name="pending", department_id=1))
        # the pending row is flushed before the query, so the count must include it
        assert session.query(Employee).count() == 4
        session.rollback()
    with cached() as session:
        assert session.query(Employee).count() == 3


@pytest.mark.usefixtures("seeded")
def test_loader_options_do_not_share_results(
    cached: sessionmaker[Session], db_reads: DatabaseReads
) -> None:
    """select(X) and select(X).options(selectinload(...)) must each give what they asked for."""
    with cached() as session:
        plain = session.scalars(select(Department).order_by(Department.id)).all()
        assert all("employees" not in d.__dict__ for d in plain)
    with cached() as session:
        loaded = session.scalars(
            select(Department).options(selectinload(Department.employees)).order_by(Department.id)
        ).all()
        assert all("employees" in d.__dict__ for d in loaded)
        assert sorted(e.name for e in loaded[0].employees) == ["ann", "bob"]
    with cached() as session:  # and the plain one still loads nothing eagerly from a hit
        plain = session.scalars(select(Department).order_by(Department.id)).all()
        assert all("employees" not in d.__dict__ for d in plain)


@pytest.mark.usefixtures("seeded")
def test_populate_existing_refreshes_from_a_fresh_entry(
    cached: sessionmaker[Session], engine: Any
) -> None:
    with cached() as session:
        ann = session.get(Employee, 1)
        assert ann is not None
        session.scalars(select(Employee).where(Employee.id == 1)).one()  # cached
        with Session(engine) as other:  # another writer renames her
            other.get(Employee, 1).name = "anne"  # type: ignore[union-attr]
            other.commit()
        session.rollback()  # end the snapshot: a new transaction may see the write
        refreshed = session.scalars(
            select(Employee).where(Employee.id == 1).execution_options(populate_existing=True)
        ).one()
        assert refreshed is ann
        assert ann.name == "anne"


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(lambda: select(Employee.name, func.now()), id="now()"),
        pytest.param(
            lambda: select(Employee.name, func.current_timestamp()), id="current_timestamp"
        ),
        pytest.param(lambda: select(Employee.name).order_by(func.rand()), id="rand()"),
        pytest.param(lambda: select(Employee.name, literal_column("UUID()")), id="uuid()"),
        pytest.param(lambda: select(Employee).execution_options(yield_per=1), id="yield_per"),
        pytest.param(lambda: text("SELECT name FROM employee WHERE ((("), id="unparseable text"),
    ],
)
@pytest.mark.usefixtures("seeded")
def test_uncacheable_reads_always_reach_the_database(
    query: Callable[[], Any],
    cached: sessionmaker[Session],
    db_reads: DatabaseReads,
    query_cache: QueryCache,
    engine: Any,
) -> None:
    for _ in range(2):
        db_reads.reset()
        # the unparseable text is a database error: it still went there
        with cached() as session, contextlib.suppress(DBAPIError):
            session.execute(query()).all()
        assert db_reads.count == 1
    stats = query_cache.stats()
    assert stats["hits"] == 0 and stats["stores"] == 0
    assert stats["bypasses"] >= 2


@pytest.mark.parametrize("read", [False, True], ids=["for update", "for share"])
def test_locking_reads_are_not_cached(
    read: bool, mariadb: Any, query_cache: QueryCache, seeded_mariadb: Any
) -> None:
    query_cache.install(mariadb)
    db_reads = DatabaseReads(mariadb)
    for _ in range(2):
        with caching_sessionmaker(mariadb)() as session:
            session.scalars(select(Employee).with_for_update(read=read)).all()
    db_reads.close()
    assert db_reads.count == 2
    assert query_cache.stats()["bypasses"] == 2


@pytest.mark.usefixtures("seeded")
def test_uncached_tables_are_read_from_the_database(engine: Any, redis_url: str) -> None:
    with cache_with(engine, redis_url, uncached_tables=["Project"]) as (_, db_reads):
        for _ in range(2):
            with caching_sessionmaker(engine)() as session:
                session.scalars(select(Project)).all()
                session.scalars(select(Department)).all()
    assert sum("FROM project" in s for s in db_reads.statements) == 2
    assert sum("FROM department" in s for s in db_reads.statements) == 1


@pytest.mark.usefixtures("seeded")
def test_results_over_the_size_limit_are_served_but_not_stored(engine: Any, redis_url: str) -> None:
    with cache_with(engine, redis_url, max_entry_bytes=256) as (cache, db_reads):
        for _ in range(2):
            with caching_sessionmaker(engine)() as session:
                assert len(session.scalars(select(Employee)).all()) == 3  # big: not stored
                assert session.scalar(select(func.count(Project.id))) == 1  # small: stored
        assert cache.stats()["bypasses"] == 2
    assert sum("FROM employee" in s for s in db_reads.statements) == 2
    assert sum("FROM project" in s for s in db_reads.statements) == 1


@pytest.mark.usefixtures("seeded")
def test_caching_is_opt_in_per_session_and_per_statement(
    engine: Any, cached: sessionmaker[Session], db_reads: DatabaseReads
) -> None:
    plain = sessionmaker(engine)
    for _ in range(2):
        with plain() as session:
            session.scalars(select(Project)).all()
    assert db_reads.count == 2  # a session without the option never caches

    db_reads.reset()
    for _ in range(2):
        with cached() as session:
            session.scalars(select(Project).execution_options(redis_cache=False)).all()
            session.query(Project).no_cache().all()  # type: ignore[attr-defined]
    assert db_reads.count == 4

    db_reads.reset()
    for _ in range(2):
        with plain() as session:
            session.scalars(select(Project).execution_options(redis_cache=True)).all()
    assert db_reads.count == 1  # a statement can opt in on its own


@pytest.mark.usefixtures("seeded")
def test_caching_query_cache_method_and_ttl(
    engine: Any, query_cache: QueryCache, db_reads: DatabaseReads, redis_inspector: Any
) -> None:
    from sa_redis_cache import CachingQuery

    plain = sessionmaker(engine, query_cls=CachingQuery)
    for _ in range(2):
        with plain() as session:
            session.query(Project).cache(ttl=30).all()  # type: ignore[attr-defined]
    assert db_reads.count == 1
    ttls = [
        redis_inspector.pttl(key)
        for key in redis_inspector.scan_iter(match="{" + query_cache.namespace + "}:e:*")
    ]
    assert ttls and all(0 < ttl <= 30_000 for ttl in ttls)


@pytest.mark.usefixtures("seeded")
def test_cache_by_default_caches_sessions_that_say_nothing(engine: Any, redis_url: str) -> None:
    """``cache_by_default=True``: every read is cached unless its session or statement opts out,
    and the options a session or statement carries are left as the application wrote them."""
    with cache_with(engine, redis_url, cache_by_default=True) as (_, db_reads):
        plain, opted_out = (
            sessionmaker(engine),
            sessionmaker(engine, execution_options={"redis_cache": False}),
        )
        statement = select(Project)
        for _ in range(2):
            with plain() as session:
                session.scalars(statement).all()
        assert db_reads.count == 1
        assert "redis_cache" not in statement.get_execution_options()
        db_reads.reset()
        for _ in range(2):
            with opted_out() as session:
                session.scalars(select(Project)).all()
            with plain() as session:
                session.scalars(select(Project).execution_options(redis_cache=False)).all()
        assert db_reads.count == 4


# -- the README's "Not cached" list, end to end ---------------------------------------------------
#
# Each case: read twice through a caching session; both reads reach the database, give what the
# database gives without the cache, and count as bypasses (never a hit, miss or store).


def into_variable(s: Session) -> Any:
    s.execute(text("SELECT name INTO @sa_name FROM employee WHERE id = 1"))
    return s.execute(text("SELECT @sa_name")).scalar()  # a session variable: not cached either


def names_of(rows: Any) -> list[str]:
    """The names column of rows whose other column is not deterministic."""
    return [row[0] for row in rows]


ONE_BY_ONE: dict[str, Any] = {"execution_options": {"yield_per": 1}}

NOT_CACHED: dict[str, tuple[Read, int]] = {
    # name: (read, SELECTs it sends to the database, each a bypass)
    "FOR UPDATE": (
        lambda s: s.scalars(select(Employee.name).order_by(Employee.id).with_for_update()).all(),
        1,
    ),
    "FOR SHARE": (
        lambda s: s.scalars(
            select(Employee.name).order_by(Employee.id).with_for_update(read=True)
        ).all(),
        1,
    ),
    "NOW()": (
        lambda s: names_of(s.execute(select(Employee.name, func.now()).order_by(Employee.id))),
        1,
    ),
    "RAND()": (lambda s: sorted(s.scalars(select(Employee.name).order_by(func.rand()))), 1),
    "UUID()": (
        lambda s: names_of(
            s.execute(select(Employee.name, literal_column("UUID()")).order_by(Employee.id))
        ),
        1,
    ),
    "stored function": (
        lambda s: s.scalars(select(func.sa_plus_one(Employee.id)).order_by(Employee.id)).all(),
        1,
    ),
    "session variable": (
        lambda s: s.execute(text("SELECT name, @@autocommit FROM employee ORDER BY id")).all(),
        1,
    ),
    "SELECT ... INTO": (into_variable, 2),
    "system schema": (
        lambda s: s.execute(
            text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = 'badge' "
                "ORDER BY ordinal_position"
            )
        ).all(),
        1,
    ),
    "yield_per": (
        lambda s: [e.name for e in s.scalars(select(Employee).order_by(Employee.id), **ONE_BY_ONE)],
        1,
    ),
    "stream_results": (
        lambda s: s.scalars(
            select(Employee.name).order_by(Employee.id).execution_options(stream_results=True)
        ).all(),
        1,
    ),
    "text the parser cannot read": (
        # MariaDB's LIMIT ROWS EXAMINED: valid SQL that sqlglot does not know
        lambda s: s.scalars(
            text("SELECT name FROM employee ORDER BY id LIMIT ROWS EXAMINED 1000")
        ).all(),
        1,
    ),
}


@pytest.mark.parametrize("case", NOT_CACHED)
def test_not_cached_reads_are_served_right_and_counted_as_bypasses(
    case: str, seeded_mariadb: Any, query_cache: QueryCache
) -> None:
    """MariaDB: most cases are MySQL syntax or MariaDB behaviour (locks, variables, functions)."""
    read, selects = NOT_CACHED[case]
    engine = seeded_mariadb
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP FUNCTION IF EXISTS sa_plus_one")
        conn.exec_driver_sql(
            "CREATE FUNCTION sa_plus_one(x INT) RETURNS INT DETERMINISTIC RETURN x + 1"
        )
    with Session(engine) as plain:
        expected = read(plain)
    query_cache.install(engine)
    reads = DatabaseReads(engine)
    try:
        for _ in range(2):
            with caching_sessionmaker(engine)() as session:
                assert read(session) == expected
    finally:
        reads.close()
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP FUNCTION sa_plus_one")
    assert reads.count == 2 * selects, reads.statements
    stats = query_cache.stats()
    assert (stats["hits"], stats["misses"], stats["stores"]) == (0, 0, 0), stats
    assert stats["bypasses"] == 2 * selects, stats


def private_engine(engine: Any) -> Any:
    """An engine of the test's own on the same database: session state it leaves on its
    connections (temporary tables) never reaches the shared engine's pool."""
    from sqlalchemy import create_engine

    private = create_engine(engine.url)
    with private.connect():  # the dialect's first-connect queries, before anyone counts reads
        pass
    return private


def test_temporary_tables_are_read_from_the_database(
    seeded_mariadb: Any, query_cache: QueryCache
) -> None:
    """Each connection has its own temporary table of a name: the same SQL reads other rows on
    another connection, so no result of it may be shared."""
    engine = private_engine(seeded_mariadb)  # its connections and their tables go with it
    query_cache.install(engine)
    reads = DatabaseReads(engine)
    read = text("SELECT x FROM sa_scratch")
    try:
        with engine.connect() as one, engine.connect() as two:
            for conn, x in ((one, 1), (two, 2)):
                conn.exec_driver_sql("CREATE TEMPORARY TABLE sa_scratch (x INT)")
                conn.exec_driver_sql(f"INSERT INTO sa_scratch VALUES ({x})")
                conn.commit()
            for conn, x in ((one, 1), (two, 2), (one, 1)):
                assert conn.execute(read, execution_options={"redis_cache": True}).all() == [(x,)]
                conn.rollback()
    finally:
        reads.close()
        query_cache.uninstall(engine)
        engine.dispose()
    assert reads.count == 3
    stats = query_cache.stats()
    assert (stats["hits"], stats["stores"], stats["bypasses"]) == (0, 0, 3), stats


class Ratio:
    """A value type no driver returns and the cache has no encoding for."""

    def __init__(self, text: bytes | str) -> None:
        self.text = text.decode() if isinstance(text, bytes) else text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ratio) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def test_values_without_a_faithful_encoding_are_served_and_counted_as_bypasses(
    tmp_path: Any, query_cache: QueryCache
) -> None:
    """A result value, or a bound parameter, of a type the cache cannot encode faithfully: the
    database answers every time and each read is a bypass. SQLite only: its driver lets a test
    return and bind any Python type (converters and adapters)."""
    import sqlite3

    from sqlalchemy import create_engine

    sqlite3.register_converter("SA_RATIO", Ratio)
    sqlite3.register_adapter(Ratio, lambda ratio: ratio.text)
    engine = create_engine(
        f"sqlite:///{tmp_path / 'ratios.db'}",
        connect_args={"detect_types": sqlite3.PARSE_DECLTYPES},
    )
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE ratio (id INTEGER PRIMARY KEY, v SA_RATIO)")
        conn.exec_driver_sql("INSERT INTO ratio VALUES (1, '1/3'), (2, '2/3')")
    query_cache.install(engine)
    reads = DatabaseReads(engine)
    try:
        for _ in range(2):
            with caching_sessionmaker(engine)() as session:
                values = session.execute(text("SELECT v FROM ratio ORDER BY id")).scalars()
                assert list(values) == [Ratio("1/3"), Ratio("2/3")]
                chosen = session.execute(
                    text("SELECT id FROM ratio WHERE v = :v"), {"v": Ratio("2/3")}
                ).scalars()
                assert list(chosen) == [2]
    finally:
        reads.close()
        query_cache.uninstall(engine)
        engine.dispose()
    assert reads.count == 4
    stats = query_cache.stats()
    assert (stats["hits"], stats["stores"], stats["bypasses"]) == (0, 0, 4), stats


def test_a_temporary_table_shadowing_a_cached_table_is_never_shared(
    seeded_mariadb: Any, query_cache: QueryCache
) -> None:
    """A connection creates a temporary table with the name of a table whose reads are already
    cached: on that connection the same SQL now reads the temporary rows, which must never be
    served to another connection."""
    engine = private_engine(seeded_mariadb)  # its connections and their tables go with it
    query_cache.install(engine)
    cached = caching_sessionmaker(engine)
    read = text("SELECT title FROM project")
    try:
        with cached() as session:
            assert session.execute(read).all() == [("apollo",)]  # planned and stored
        with engine.connect() as shadowing:
            shadowing.exec_driver_sql("CREATE TEMPORARY TABLE project (title VARCHAR(80))")
            shadowing.exec_driver_sql("INSERT INTO project VALUES ('temporary')")
            shadowing.commit()
            assert shadowing.execute(read, execution_options={"redis_cache": True}).all() == [
                ("temporary",)
            ]
            shadowing.rollback()
            with cached() as session:  # another connection: the real table
                assert session.execute(read).all() == [("apollo",)]
    finally:
        query_cache.uninstall(engine)
        engine.dispose()
