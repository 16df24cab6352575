"""The cache must not make an application wait for another schema's metadata locks.

After DDL, the cache reads the server's foreign keys again (``cascades.py``) with a server-wide
``information_schema.REFERENTIAL_CONSTRAINTS`` query, on a connection that holds no metadata lock
any more (DDL commits). On MariaDB that query waits behind a pending exclusive metadata lock of any
schema: a ``DROP DATABASE other`` that holds ``other.a`` while it waits for a transaction that
read ``other.b``. So DDL on this
application's own schema hung for ``lock_wait_timeout`` (a day by default) because of a database it
never touches; on the shared test server every run's migrations stopped behind one stuck DROP.

Runs on a MariaDB server of its own: the pending DROP would stall other users of a shared one.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import MySQLdb
import pytest
from sqlalchemy import create_engine

from sa_redis_cache import QueryCache
from sa_redis_cache.testing import service_missing

DEADLINE = 20.0
"""Seconds the DDL may take: on an idle private server it takes milliseconds."""


@pytest.fixture
def private_mariadb(tmp_path: Path) -> Iterator[int]:
    """A throwaway mariadbd on a free loopback port; its port."""
    if shutil.which("mariadbd") is None or shutil.which("mariadb-install-db") is None:
        service_missing("mariadbd (to start a private MariaDB)", FileNotFoundError())
    data = tmp_path / "data"
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        check=True, capture_output=True,
    )  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    server = subprocess.Popen(
        ["mariadbd", "--no-defaults", f"--datadir={data}", "--user=root", f"--port={port}",
         "--bind-address=127.0.0.1", f"--socket={tmp_path / 'sock'}",
         f"--pid-file={tmp_path / 'pid'}", "--skip-log-bin", "--innodb-buffer-pool-size=32M"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                MySQLdb.connect(host="127.0.0.1", port=port, user="root").close()
                break
            except MySQLdb.OperationalError:
                assert server.poll() is None, "mariadbd exited"
                assert time.monotonic() < deadline, "mariadbd did not start"
                time.sleep(0.05)  # waiting for start-up, not asserting timing
        yield port
    finally:
        server.terminate()
        server.wait(30)


def test_ddl_does_not_wait_for_another_schemas_metadata_locks(
    private_mariadb: int, query_cache: QueryCache
) -> None:
    port = private_mariadb

    def connect() -> MySQLdb.Connection:
        return MySQLdb.connect(host="127.0.0.1", port=port, user="root")

    admin = connect()
    admin.autocommit(True)
    for sql in (
        "CREATE DATABASE mine",
        "CREATE DATABASE other",
        "CREATE TABLE other.a (id INT PRIMARY KEY) ENGINE=InnoDB",
        "CREATE TABLE other.b (a INT, FOREIGN KEY (a) REFERENCES other.a (id)) ENGINE=InnoDB",
    ):
        admin.cursor().execute(sql)
    engine = create_engine(f"mysql+mysqldb://root@127.0.0.1:{port}/mine")
    query_cache.install(engine)

    reader = connect()  # a transaction that read other.b, still open
    reader.cursor().execute("BEGIN")
    reader.cursor().execute("SELECT * FROM other.b")
    # DROP DATABASE other locks other.a, then waits for that transaction to release other.b
    dropper = connect()
    drop = threading.Thread(target=lambda: dropper.cursor().execute("DROP DATABASE other"))
    drop.start()
    ddl_done = threading.Event()

    def ddl() -> None:
        with engine.connect() as connection:
            connection.exec_driver_sql("CREATE TABLE t (id INT)")
        ddl_done.set()

    try:
        deadline = time.monotonic() + DEADLINE
        while not _drop_is_waiting(admin):
            assert time.monotonic() < deadline, "the DROP never started waiting"
            time.sleep(0.01)  # polling toward the deadline
        threading.Thread(target=ddl, daemon=True).start()
        finished = ddl_done.wait(DEADLINE)
    finally:
        reader.rollback()  # the DROP, then anything queued behind it, goes through
        drop.join(DEADLINE)
        ddl_done.wait(DEADLINE)
        engine.dispose()
    assert finished, "DDL on mine waited for the metadata locks of the other schema's DROP"


def _drop_is_waiting(admin: MySQLdb.Connection) -> bool:
    cursor = admin.cursor()
    cursor.execute(
        "SELECT STATE FROM information_schema.PROCESSLIST WHERE INFO LIKE 'DROP DATABASE%'"
    )
    return any("metadata lock" in (state or "") for (state,) in cursor.fetchall())
