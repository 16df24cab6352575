"""A DBAPI cursor stand-in that hands SQLAlchemy rows held in memory.

Served from a hit (the statement never reaches the database) or from a miss whose rows were read
off the real cursor so they could be stored. SQLAlchemy's result machinery (type processors, ORM
loading, identity map) then runs on them exactly as on the database's own cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class BufferedCursor:
    __slots__ = ("_position", "_rows", "arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, description: Sequence[Sequence[Any]], rows: Sequence[Sequence[Any]]) -> None:
        self.description = description
        self._rows = rows
        self._position = 0
        self.rowcount = len(rows)
        self.arraysize = 1
        self.lastrowid = None

    def fetchone(self) -> Sequence[Any] | None:
        if self._position >= len(self._rows):
            return None
        row = self._rows[self._position]
        self._position += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[Sequence[Any]]:
        end = self._position + (self.arraysize if size is None else size)
        rows = list(self._rows[self._position : end])
        self._position += len(rows)
        return rows

    def fetchall(self) -> list[Sequence[Any]]:
        rows = list(self._rows[self._position :])
        self._position = len(self._rows)
        return rows

    def close(self) -> None:
        self._rows = ()
        self._position = 0

    async def _async_soft_close(self) -> None:
        """What an ``AsyncSession`` calls on the cursor of a buffered result (as SQLAlchemy's
        asyncio cursor adapters define it): the rows are in memory, there is nothing to close."""
