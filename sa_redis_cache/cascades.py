"""Database-side cascades: tables a write can change without naming them.

A DELETE or UPDATE of ``department`` also changes ``employee`` if a foreign key from ``employee``
says ``ON DELETE CASCADE`` / ``SET NULL`` / ``SET DEFAULT`` (or the same ``ON UPDATE``); the
database does it, so no statement we see names ``employee``. The foreign keys are read from the
database itself, on the committing connection, the first time a commit writes a table of a schema,
and again after any DDL (which may have added or dropped one). Each query names its schema as the
child's and the parent's (the key columns of ``information_schema``'s table): a query over every
schema would open every table of the server and wait on any metadata lock held anywhere. So a
foreign key from a table of another schema is not followed, and triggers stay invisible: see the
README's limits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .tables import ALL_TABLES

log = logging.getLogger("sa_redis_cache")

# foreign keys within one schema whose child rows change when the parent changes; waiting at most
# a second for a table's metadata lock (then: "everything may change"), never the server's
# lock_wait_timeout (a day by default) behind someone else's DDL
_MYSQL_QUERY = """
SELECT {hint} CONSTRAINT_SCHEMA, TABLE_NAME, REFERENCED_TABLE_NAME
FROM information_schema.REFERENTIAL_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA = %s AND UNIQUE_CONSTRAINT_SCHEMA = %s
  AND (DELETE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT')
       OR UPDATE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT'))
"""
_MARIADB_QUERY = "SET STATEMENT lock_wait_timeout = 1 FOR " + _MYSQL_QUERY.format(hint="")
_MYSQL8_QUERY = _MYSQL_QUERY.format(hint="/*+ SET_VAR(lock_wait_timeout = 1) */")
_CHANGING_RULES = {"CASCADE", "SET NULL", "SET DEFAULT"}


class CascadeMap:
    """parent table -> child tables its writes can change, schema by schema, for one engine."""

    def __init__(
        self,
        dialect_name: str,
        table_name: Callable[[str, str | None], str],
        default_schema: str,
        is_mariadb: Callable[[], bool] = lambda: False,
    ) -> None:
        self._dialect = dialect_name
        self._is_mariadb = is_mariadb  # known once the dialect has connected
        self._table_name = table_name
        self._default_schema = default_schema
        self._children: dict[str, dict[str, set[str]]] = {}
        """schema -> parent -> children, for the schemas read so far"""

    def forget(self) -> None:
        """The schema changed: read the foreign keys again before the next use."""
        self._children = {}

    def expand(self, tables: frozenset[str], dbapi_connection: Any) -> frozenset[str]:
        """``tables`` plus every table a cascade from them can reach."""
        if not tables or ALL_TABLES in tables:
            return tables
        reached = set(tables)
        todo = list(tables)
        while todo:
            table = todo.pop()
            schema = table.rpartition(".")[0] or self._default_schema
            children = self._children.get(schema)
            if children is None:
                try:
                    children = self._children[schema] = self._load(dbapi_connection, schema)
                except Exception as exc:  # any driver error: "everything may change"
                    log.warning("could not read foreign keys (%s); invalidating all tables", exc)
                    return frozenset({ALL_TABLES})
            for child in children.get(table, ()):
                if child not in reached:
                    reached.add(child)
                    todo.append(child)
        return frozenset(reached)

    def _load(self, dbapi_connection: Any, schema: str) -> dict[str, set[str]]:
        pairs: list[tuple[str, str]] = []  # (child, parent) in key spelling
        cursor = dbapi_connection.cursor()
        try:
            if self._dialect in ("mysql", "mariadb"):
                query = _MARIADB_QUERY if self._is_mariadb() else _MYSQL8_QUERY
                cursor.execute(query, (schema, schema))
                pairs = [
                    (self._table_name(child, child_schema), self._table_name(parent, schema))
                    for child_schema, child, parent in cursor.fetchall()
                ]
            elif self._dialect == "sqlite":
                cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                for (child,) in cursor.fetchall():
                    quoted = child.replace('"', '""')
                    cursor.execute(f'PRAGMA foreign_key_list("{quoted}")')
                    for row in cursor.fetchall():
                        if {str(row[5]).upper(), str(row[6]).upper()} & _CHANGING_RULES:
                            pairs.append(
                                (self._table_name(child, None), self._table_name(row[2], None))
                            )
            else:
                log.warning("database-side cascades are not detected on %s", self._dialect)
        finally:
            cursor.close()
        children: dict[str, set[str]] = {}
        for child, parent in pairs:
            children.setdefault(parent, set()).add(child)
        return children
