"""Write tracking: what one database transaction wrote, level by level, and what it has read.

One :class:`TransactionState` lives with each connection from ``begin`` to commit or rollback.
Savepoints push a level; a released savepoint's writes join its parent, a rolled-back one's are
forgotten (they never reach the database, so they publish nothing).

It also remembers the transaction's snapshot clock: the write counter read before the
transaction's first statement that could take a snapshot. Under REPEATABLE READ a later statement
sees the database as of that snapshot, so a table bumped after it must not be served or stored.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from .tables import ALL_TABLES


@dataclass(slots=True)
class _Level:
    savepoint: str | None
    tables: set[str] = field(default_factory=set)


@dataclass(slots=True)
class TransactionState:
    levels: list[_Level] = field(default_factory=lambda: [_Level(None)])
    snapshot_clock: int | None = None
    """Write counter read before the snapshot was taken; None until the first cached lookup."""
    snapshot_unknown: bool = False
    """A statement that may have taken the snapshot ran before any lookup told us the counter."""
    untrusted: bool = False
    """The cache lost track of this transaction (one of its own hooks failed): it counts as
    having written every table, and nothing in it is served or stored."""

    def distrust(self) -> None:
        self.untrusted = True
        self.snapshot_unknown = True

    def note_uncached_statement(self) -> None:
        """A statement that may take the snapshot is about to reach the database unobserved."""
        if self.snapshot_clock is None:
            self.snapshot_unknown = True

    def record_writes(self, tables: frozenset[str]) -> None:
        self.levels[-1].tables |= tables

    def written(self) -> set[str]:
        """Every table written so far at any level (read-your-writes bypasses them)."""
        if self.untrusted:
            return {ALL_TABLES}
        if len(self.levels) == 1:
            return self.levels[0].tables
        return set().union(*(level.tables for level in self.levels))

    def savepoint(self, name: str | None) -> None:
        self.levels.append(_Level(name))

    def release_savepoint(self, name: str) -> None:
        index = self._find(name)
        if index is not None:
            merged = set().union(*(level.tables for level in self.levels[index:]))
            del self.levels[index:]
            self.levels[-1].tables |= merged

    def rollback_savepoint(self, name: str) -> None:
        index = self._find(name)
        if index is not None:
            del self.levels[index:]

    def _find(self, name: str) -> int | None:
        """The level of savepoint ``name``. SQLAlchemy announces a savepoint before naming it
        (the event gets None), but nests them strictly: an unknown name is the innermost one."""
        for index in range(len(self.levels) - 1, 0, -1):
            if self.levels[index].savepoint == name:
                return index
        return len(self.levels) - 1 if len(self.levels) > 1 else None


class TransactionStates:
    """The state of each connection's current transaction.

    Keyed by the SQLAlchemy ``Connection`` (weakly), not stored in ``Connection.info``: the
    connection a dialect uses for its first-connect queries has no ``info``.
    """

    def __init__(self) -> None:
        self._states: weakref.WeakKeyDictionary[object, TransactionState] = (
            weakref.WeakKeyDictionary()
        )

    def of(self, connection: object) -> TransactionState:
        state = self._states.get(connection)
        if state is None:
            state = self._states[connection] = TransactionState()
        return state

    def reset(self, connection: object) -> None:
        self._states.pop(connection, None)
