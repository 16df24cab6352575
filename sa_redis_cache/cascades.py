"""Database-side cascades: tables a write can change without naming them.

A DELETE or UPDATE of ``department`` also changes ``employee`` if a foreign key from ``employee``
says ``ON DELETE CASCADE`` / ``SET NULL`` / ``SET DEFAULT`` (or the same ``ON UPDATE``); the
database does it, so no statement we see names ``employee``. The foreign keys are read from the
database itself, on the committing connection, the first time a commit needs them and again after
any DDL (which may have added or dropped one). Triggers stay invisible: see the README's limits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .tables import ALL_TABLES

log = logging.getLogger("sa_redis_cache")

# every schema of the server: a write through this engine may name another schema's table
_MYSQL_QUERY = """
SELECT CONSTRAINT_SCHEMA, TABLE_NAME, UNIQUE_CONSTRAINT_SCHEMA, REFERENCED_TABLE_NAME
FROM information_schema.REFERENTIAL_CONSTRAINTS
WHERE DELETE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT')
   OR UPDATE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT')
"""
_CHANGING_RULES = {"CASCADE", "SET NULL", "SET DEFAULT"}


class CascadeMap:
    """parent table -> child tables its writes can change, for one database."""

    def __init__(self, dialect_name: str, table_name: Callable[[str, str | None], str]) -> None:
        self._dialect = dialect_name
        self._table_name = table_name
        self._children: dict[str, set[str]] | None = None

    def forget(self) -> None:
        """The schema changed: read the foreign keys again before the next use."""
        self._children = None

    def expand(self, tables: frozenset[str], dbapi_connection: Any) -> frozenset[str]:
        """``tables`` plus every table a cascade from them can reach."""
        if not tables or ALL_TABLES in tables:
            return tables
        children = self._children
        if children is None:
            try:
                children = self._children = self._load(dbapi_connection)
            except Exception as exc:  # any driver error: fall back to "everything may change"
                log.warning("could not read foreign keys for cascades (%s); invalidating all", exc)
                return frozenset({ALL_TABLES})
        reached = set(tables)
        todo = list(tables)
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in reached:
                    reached.add(child)
                    todo.append(child)
        return frozenset(reached)

    def _load(self, dbapi_connection: Any) -> dict[str, set[str]]:
        pairs: list[tuple[str, str]] = []  # (child, parent) in key spelling
        cursor = dbapi_connection.cursor()
        try:
            if self._dialect in ("mysql", "mariadb"):
                cursor.execute(_MYSQL_QUERY)
                pairs = [
                    (self._table_name(child, child_schema), self._table_name(parent, schema))
                    for child_schema, child, schema, parent in cursor.fetchall()
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
