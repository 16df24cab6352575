"""The public API: wrong arguments fail at construction with clear errors; install is idempotent
and undone by uninstall; keys never carry a password."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.engine import make_url

from sa_redis_cache import CacheConfigurationError, CachingQuery, QueryCache
from sa_redis_cache.keys import KeyBuilder, default_schema, server_identity
from tests.conftest import DatabaseReads, caching_sessionmaker, unique_namespace
from tests.models import Employee

CLIENT = redis.Redis(socket_timeout=1, retry=None)  # constructing a client does not connect


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl": -1}, "ttl must be a positive integer"),
        ({"ttl": 0}, "ttl must be a positive integer"),
        ({"ttl": 1.5}, "ttl must be a positive integer"),
        ({"ttl": True}, "ttl must be a positive integer"),
        ({"namespace": ""}, "namespace must be"),
        ({"namespace": "a b"}, "namespace must be"),
        ({"namespace": "{x}"}, "namespace must be"),
        ({"namespace": "x" * 65}, "namespace must be"),
        ({"namespace": 5}, "namespace must be"),
        ({"max_entry_bytes": 0}, "max_entry_bytes must be a positive integer"),
        ({"uncached_tables": "employee"}, "not a single string"),
        ({"uncached_tables": [""]}, "table names must be non-empty"),
        ({"write_lease": 0}, "write_lease must be a positive number"),
        ({"retry_after": -2}, "retry_after must be a positive number"),
        ({"stampede_wait": -1}, "stampede_wait must be a number of seconds >= 0"),
        ({"cache_by_default": "yes"}, "cache_by_default must be True or False"),
    ],
)
def test_bad_options_raise_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(CacheConfigurationError, match=message):
        QueryCache(CLIENT, **options)
    assert issubclass(CacheConfigurationError, ValueError)


@pytest.mark.parametrize("client", [None, "redis://x", object(), redis.asyncio.Redis])
def test_something_that_is_not_a_redis_client_is_a_type_error(client: Any) -> None:
    with pytest.raises(TypeError, match=r"needs a redis\.Redis, a redis\.asyncio\.Redis"):
        QueryCache(client)


def test_a_client_that_does_not_suit_the_engine_is_a_type_error_saying_what_to_use() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    async_engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(TypeError, match=r"AsyncEngine needs a cache on a redis\.asyncio client"):
        QueryCache(CLIENT).install(async_engine)
    with pytest.raises(TypeError, match=r"synchronous Engine needs a cache on a synchronous"):
        QueryCache(redis.asyncio.Redis(socket_timeout=0.25, retry=None)).install(
            create_engine("sqlite://")
        )
    async_cache = QueryCache(redis.asyncio.Redis(socket_timeout=0.25, retry=None))
    async_cache.install(async_engine)
    assert async_cache.engines == (async_engine.sync_engine,)
    with pytest.raises(TypeError, match=r"await cache\.ainvalidate\(\)"):
        async_cache.invalidate("t")  # outside SQLAlchemy's greenlet it would block the loop
    with pytest.raises(TypeError, match=r"await cache\.aclear\(\)"):
        async_cache.clear()
    async_cache.uninstall(async_engine)
    assert async_cache.engines == ()
    with pytest.raises(TypeError, match=r"this one is synchronous: use cache\.clear\(\)"):
        asyncio.run(QueryCache(CLIENT).aclear())


def test_caching_query_rejects_a_bad_ttl() -> None:
    from sqlalchemy.orm import Session

    with Session(query_cls=CachingQuery) as session, pytest.raises(CacheConfigurationError):
        session.query(Employee).cache(ttl=-5)  # type: ignore[attr-defined]


def test_install_wants_an_engine() -> None:
    with pytest.raises(TypeError):
        QueryCache(CLIENT).install("sqlite://")  # type: ignore[arg-type]


QUICK = {"socket_timeout": 0.25, "socket_connect_timeout": 0.25, "retry": None}


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ({"socket_timeout": None}, "socket_timeout=unset"),
        ({"socket_timeout": 5}, "socket_timeout=5s"),
        ({"socket_connect_timeout": 3}, "socket_connect_timeout=3s"),
        ({"retry": redis.Redis().get_retry()}, "retries with backoff"),  # redis-py's default
    ],
)
def test_client_that_fails_slowly_is_warned_about(
    setting: dict[str, Any], complaint: str, caplog: pytest.LogCaptureFixture
) -> None:
    QueryCache(redis.Redis(**{**QUICK, **setting}))
    assert "a dead or hung Redis stalls a request" in caplog.text
    assert complaint in caplog.text
    caplog.clear()
    QueryCache(redis.Redis(**QUICK))
    assert caplog.text == ""


@pytest.mark.usefixtures("seeded")
def test_install_is_idempotent_and_uninstall_undoes_it(
    engine: Engine, query_cache: QueryCache
) -> None:
    do_commit = engine.dialect.do_commit
    query_cache.install(engine)
    query_cache.install(engine)
    assert query_cache.engines == (engine,)
    cached = caching_sessionmaker(engine)
    reads = DatabaseReads(engine)
    for _ in range(3):
        with cached() as session:
            session.scalars(select(Employee)).all()
    assert reads.count == 1  # installed once: one miss, then hits
    assert query_cache.stats()["stores"] == 1

    query_cache.uninstall(engine)
    query_cache.uninstall(engine)
    assert query_cache.engines == ()
    assert engine.dialect.do_commit == do_commit
    reads.reset()
    for _ in range(2):
        with cached() as session:
            session.scalars(select(Employee)).all()
    reads.close()
    assert reads.count == 2


def test_invalidate_needs_an_installed_engine() -> None:
    with pytest.raises(CacheConfigurationError):
        QueryCache(CLIENT).invalidate("employee")


@pytest.mark.usefixtures("seeded")
def test_invalidate_all_and_by_table(engine: Engine, query_cache: QueryCache) -> None:
    query_cache.install(engine)
    cached = caching_sessionmaker(engine)
    reads = DatabaseReads(engine)

    def read_both() -> None:
        with cached() as session:
            session.scalars(select(Employee)).all()
            session.execute(select(1)).all()

    read_both()
    query_cache.invalidate("Employee")  # names are case-insensitive
    reads.reset()
    read_both()
    assert reads.count == 1
    query_cache.invalidate()
    reads.reset()
    read_both()
    reads.close()
    assert reads.count == 2
    assert query_cache.stats()["invalidations"] >= 2


def test_invalidate_by_database_id_needs_no_engine(
    mariadb: Engine, seeded_mariadb: Engine, query_cache: QueryCache, redis_url: str
) -> None:
    """A tool with no engine (the binlog watcher, an operator) names the server and
    ``schema.table``, and reaches the entries of every app on that server."""
    query_cache.install(mariadb)
    cached = caching_sessionmaker(mariadb)
    reads = DatabaseReads(mariadb)
    with cached() as session:
        session.scalars(select(Employee)).all()
    tool = QueryCache.from_url(redis_url, namespace=query_cache.namespace)
    with pytest.raises(CacheConfigurationError, match=r"schema\.table"):
        tool.invalidate("employee", database_id=server_identity(mariadb.url))
    tool.invalidate(f"{mariadb.url.database}.Employee", database_id=server_identity(mariadb.url))
    reads.reset()
    with cached() as session:
        session.scalars(select(Employee)).all()
    assert reads.count == 1  # the entry died
    tool.invalidate(f"{mariadb.url.database}.employee", database_id="another-server")
    reads.reset()
    with cached() as session:
        session.scalars(select(Employee)).all()
    reads.close()
    assert reads.count == 0  # another server's table of the same name is another table


def test_server_identity_has_no_password_and_folds_loopback_and_mariadb() -> None:
    one = server_identity(make_url("mysql+mysqldb://root:s3cret@localhost/shop"))
    two = server_identity(make_url("mariadb+pymysql://other:pw@127.0.0.1:3306/other"))
    assert one == two == "mysql://127.0.0.1:3306"
    assert server_identity(make_url("mysql://h:3307/shop")) != one
    assert default_schema(make_url("mysql://h/Shop")) == "shop"
    assert default_schema(make_url("sqlite:///x.db")) == "main"
    keys = KeyBuilder("ns", one, "shop", "mysql+mysqldb")
    entry_key, _ = keys.entry("SELECT 1", b"")
    assert "s3cret" not in entry_key + keys.version("t") + keys.clock


def test_version_keys_name_the_schema_whatever_the_default() -> None:
    """A write to ``other.t`` through an engine on ``shop`` moves the key that an engine on
    ``other`` reads for ``t``."""
    shop = KeyBuilder("ns", "server", "shop", "mysql+mysqldb")
    other = KeyBuilder("ns", "server", "other", "mysql+mysqldb")
    assert shop.version("other.t") == other.version("t") != shop.version("t")
    assert shop.writing("other.t") == other.writing("t")
    assert shop.entry("SELECT * FROM t", b"")[0] != other.entry("SELECT * FROM t", b"")[0]


def test_entry_key_separates_what_changes_a_result() -> None:
    base = KeyBuilder("ns", "db", "s", "mysql+mysqldb")
    key = base.entry("SELECT 1", b"p")[0]
    assert base.entry("SELECT 1", b"p")[0] == key
    assert base.entry("SELECT 2", b"p")[0] != key
    assert base.entry("SELECT 1", b"q")[0] != key
    assert KeyBuilder("other", "db", "s", "mysql+mysqldb").entry("SELECT 1", b"p")[0] != key
    assert KeyBuilder("ns", "db2", "s", "mysql+mysqldb").entry("SELECT 1", b"p")[0] != key
    assert KeyBuilder("ns", "db", "s", "mysql+pymysql").entry("SELECT 1", b"p")[0] != key


def test_from_url_uses_short_timeouts(redis_url: str) -> None:
    cache = QueryCache.from_url(redis_url, namespace=unique_namespace("x"), ttl=5)
    kwargs = cache.client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    assert 0 < kwargs["socket_timeout"] <= 1
    assert cache.config.ttl == 5


def test_sqlite_memory_databases_are_never_shared() -> None:
    a, b = create_engine("sqlite://"), create_engine("sqlite://")
    assert server_identity(a.url) != server_identity(b.url)
