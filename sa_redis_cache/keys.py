"""Key building: every Redis key this library touches, and the database identity inside them.

All keys of a namespace share the hash tag ``{namespace}`` so that each Lua script's keys live in
one Redis Cluster slot. Entry keys hash everything that changes a result: the format version, the
namespace, the database server and default schema, the driver (drivers differ in the raw values
they return), the SQL and its bound parameters. Version keys name the server and the
schema-qualified table only: a write made through any driver, app or schema must reach every
reader of that table.
"""

from __future__ import annotations

import hashlib
import os

from sqlalchemy.engine import URL

from .serialization import FORMAT_VERSION
from .tables import ALL_TABLES

_DEFAULT_PORTS = {"mysql": 3306, "postgresql": 5432}
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}
_BACKEND_FAMILY = {"mariadb": "mysql"}  # one server speaks both URL schemes


def server_identity(url: URL) -> str:
    """A short, password-free name for the database server ``url`` points at.

    ``localhost`` and ``127.0.0.1`` are one server, ``mysql://`` and ``mariadb://`` one backend;
    an absent port is the backend's default. Two URLs that reach one server by other names (a DNS
    alias, say) must be given one identity explicitly with ``install(engine, database_id=...)``,
    or writes through one would not invalidate reads through the other. A SQLite file is a server
    of its own (its schema is ``main``).
    """
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            # a private in-memory database: nothing outside this process can share it
            return f"sqlite-memory-{os.getpid()}-{os.urandom(4).hex()}"
        return f"sqlite:{os.path.realpath(database)}"
    backend = _BACKEND_FAMILY.get(backend, backend)
    host = (url.host or "localhost").lower()
    if host in _LOOPBACK_NAMES:
        host = "127.0.0.1"
    port = url.port or _DEFAULT_PORTS.get(backend, 0)
    return f"{backend}://{host}:{port}"


def default_schema(url: URL) -> str:
    """The schema that unqualified table names in the engine's SQL belong to."""
    if url.get_backend_name() == "sqlite":
        return "main"
    return (url.database or "").lower()


def bumps_channel(namespace: str) -> str:
    """The pub/sub channel every bump of ``namespace`` is published on (near caches listen)."""
    return "{" + namespace + "}:bumps"


def near_ping_channel(namespace: str) -> str:
    """A channel of this process's own, through which its near cache pings itself."""
    return "{" + namespace + "}:near:" + os.urandom(8).hex()


class KeyBuilder:
    """Key names for one namespace and one engine's view of a database server.

    Version keys name the server and the schema-qualified table, so that every engine (and the
    binlog watcher) that can write a table moves the same key, whatever its default schema.
    Entry keys also hash the engine's default schema: the same SQL text reads other tables in
    another schema.
    """

    def __init__(self, namespace: str, server_id: str, schema: str, driver: str) -> None:
        prefix = "{" + namespace + "}:"
        self._prefix = prefix
        self._server = hashlib.blake2b(server_id.encode(), digest_size=6).hexdigest()
        self._schema = schema
        salt = f"{FORMAT_VERSION}\0{namespace}\0{server_id}\0{schema}\0{driver}\0".encode()
        self._salted = hashlib.blake2b(salt, digest_size=20)  # copied per entry, not re-fed
        self.clock = prefix + "clock"
        """Hash with the namespace's epoch (``e``) and write counter (``n``)."""
        self.bumps = bumps_channel(namespace)
        """The pub/sub channel every bump of the namespace is published on (near caches)."""
        self.heartbeat = f"{prefix}hb:{self._server}"
        """Refreshed by the binlog watcher following this server while it is caught up; with
        ``require_watcher`` readers use the cache only while it exists."""

    def entry(self, sql: str, parameters: bytes) -> tuple[str, str]:
        """The entry key for a statement and its encoded parameters, and the digest inside it
        (hex)."""
        digest = self._salted.copy()
        digest.update(sql.encode())
        digest.update(b"\0")
        digest.update(parameters)
        hexed = digest.hexdigest()
        return self._prefix + "e:" + hexed, hexed

    def lock(self, digest: str) -> str:
        """Held by the one process computing a missing entry while others wait for it."""
        return self._prefix + "l:" + digest

    def version(self, table: str) -> str:
        """Holds the counter value of the table's last write."""
        return f"{self._prefix}v:{self._server}:{self._qualified(table)}"

    def writing(self, table: str) -> str:
        """Sorted set of writers between their pre-commit announcement and their bump.

        The all-tables marker is namespace-wide, like the epoch that invalidates all tables.
        """
        if table == ALL_TABLES:
            return f"{self._prefix}w:*"
        return f"{self._prefix}w:{self._server}:{self._qualified(table)}"

    def watcher(self, name: str) -> str:
        """The binlog watcher's own keys for this server (``lease``, ``position``)."""
        return f"{self._prefix}binlog:{self._server}:{name}"

    def _qualified(self, table: str) -> str:
        """``schema.table``: plans leave the default schema out, keys never do."""
        if "." in table or not self._schema:
            return table
        return f"{self._schema}.{table}"
