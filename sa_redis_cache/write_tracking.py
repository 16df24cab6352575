"""Write tracking: what one database transaction wrote, level by level, and what it has read.

One :class:`TransactionState` lives on each DBAPI connection (``Connection.info``) from ``begin`` to
commit or rollback. Savepoints push a level; a released savepoint's writes join its parent, a
rolled-back one's are forgotten (they never reach the database, so they publish nothing).

It also remembers the transaction's snapshot clock: the write counter read before the
transaction's first statement that could take a snapshot. Under REPEATABLE READ a later statement
sees the database as of that snapshot, so a table bumped after it must not be served or stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_STATE_KEY = "sa_redis_cache.transaction"


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

    def note_uncached_statement(self) -> None:
        """A statement that may take the snapshot is about to reach the database unobserved."""
        if self.snapshot_clock is None:
            self.snapshot_unknown = True

    def record_writes(self, tables: frozenset[str]) -> None:
        self.levels[-1].tables |= tables

    def written(self) -> set[str]:
        """Every table written so far at any level (read-your-writes bypasses them)."""
        if len(self.levels) == 1:
            return self.levels[0].tables
        return set().union(*(level.tables for level in self.levels))

    def savepoint(self, name: str) -> None:
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
        for index in range(len(self.levels) - 1, 0, -1):
            if self.levels[index].savepoint == name:
                return index
        return None


def transaction_state(info: dict[object, object]) -> TransactionState:
    """The state of the transaction on the connection whose ``info`` dict this is."""
    state = info.get(_STATE_KEY)
    if state is None:
        state = info[_STATE_KEY] = TransactionState()
    assert isinstance(state, TransactionState)
    return state


def reset_transaction_state(info: dict[object, object]) -> None:
    info.pop(_STATE_KEY, None)
