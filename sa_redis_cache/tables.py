"""Table detection: which tables a SQL statement reads or writes, and may its result be cached.

Nobody types table names: they come from the SQL the database actually receives, parsed with
sqlglot (so joins, eager loaders, subqueries, CTEs and ``text()`` are all seen the same way). A
plan is computed once per distinct SQL string and kept in a bounded map (the oldest plan goes
first when it is full): a hit costs one dict lookup, with no bookkeeping on the hot path.

When the parser cannot tell what a statement does, the answer is always the safe one: a read is not
cached, a write invalidates every table (:data:`ALL_TABLES`).
"""

from __future__ import annotations

import enum
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock
from typing import Final

import sqlglot
from sqlglot import exp

from .config import normalize_table_name

ALL_TABLES: Final = "*"
"""Stands for "every table": what a write of unknown reach invalidates."""

log = logging.getLogger("sa_redis_cache")

# sqlglot logs a warning for each statement it falls back to parsing as a Command; we handle those.
logging.getLogger("sqlglot").setLevel(logging.ERROR)


class StatementKind(enum.Enum):
    READ = "read"
    WRITE = "write"
    DDL = "ddl"
    OTHER = "other"  # SET, SHOW, SAVEPOINT, BEGIN...: neither cached nor invalidating
    SESSION = "session"
    """Changes the connection's state in a way the cache cannot follow (``USE`` another schema,
    ``SET autocommit``, ``READ UNCOMMITTED``): from then on that connection is read from the
    database and each of its writes invalidates every table at once."""


@dataclass(frozen=True, slots=True)
class StatementPlan:
    kind: StatementKind
    tables: frozenset[str]
    """Tables read (READ) or written (WRITE, DDL); may contain :data:`ALL_TABLES` for writes."""
    uncacheable: str | None = None
    """For a READ: why its result must not be cached, or None."""


# Function classes whose result changes from call to call or from session to session: these,
# and every class whose name starts with one of the prefixes (sqlglot has hundreds of classes;
# the prefixes catch the families: CurrentUser, CurrentTimestamp, UtcDate, Localtime, ...).
_VOLATILE_FUNCTIONS: Final = frozenset(
    {
        "Rand", "Randn", "Randstr", "Random", "Uuid", "UnixSeconds", "UnixMillis", "UnixMicros",
        "Sysdate", "Systimestamp", "Now", "NextValueFor", "Seq1", "Seq2", "Seq4", "Seq8",
    }
)  # fmt: skip
_VOLATILE_PREFIXES: Final = ("Current", "Utc", "Local", "Session", "Generate", "AI")
_SYSTEM_SCHEMAS: Final = frozenset({"information_schema", "performance_schema", "mysql", "sys"})
_SYSTEM_TABLES: Final = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master"})
_PSEUDO_TABLES: Final = frozenset({"dual"})
# Leading keywords of statements that neither read cacheable data nor write tables.
_HARMLESS_COMMANDS: Final = frozenset(
    {
        "SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN", "START", "COMMIT", "SET", "SHOW",
        "EXPLAIN", "DESCRIBE", "DESC", "USE", "XA", "HELP", "CHECKSUM", "CHECK", "PRAGMA",
        "LOCK", "UNLOCK",
    }
)  # fmt: skip
_DDL_TYPES: Final = (exp.Create, exp.Drop, exp.Alter, exp.TruncateTable)
_DML_TYPES: Final = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_OTHER_TYPES: Final = (
    exp.Set, exp.Show, exp.Transaction, exp.Commit, exp.Rollback, exp.Use, exp.Describe,
    exp.Pragma,
)  # fmt: skip
_PLACEHOLDER_RE: Final = re.compile(r"%\(\w+\)s|%s")
# MySQL's DML modifiers, which sqlglot would otherwise take for the table name
_DML_MODIFIERS_RE: Final = re.compile(
    r"^(\s*(?:INSERT|REPLACE|UPDATE|DELETE))((?:\s+(?:LOW_PRIORITY|HIGH_PRIORITY|DELAYED|QUICK|IGNORE))+)\b",
    re.IGNORECASE,
)
_FIRST_WORD_RE: Final = re.compile(r"^\s*\(*\s*([A-Za-z]+)")
# MariaDB: SET STATEMENT var = value [, ...] FOR <statement>
_SET_STATEMENT_RE: Final = re.compile(r"^\s*SET\s+STATEMENT\s.*?\sFOR\s(.*)$", re.I | re.S)
_AUTOCOMMIT_RE: Final = re.compile(r"\bautocommit\b", re.I)
_READ_UNCOMMITTED_RE: Final = re.compile(r"\bREAD[\s_-]+UNCOMMITTED\b", re.I)
_USE_RE: Final = re.compile(r"^\s*USE\s+[`\"]?([^`\"\s;]+)", re.I)
_PLAN_CACHE_SIZE: Final = 4096


class TableDetector:
    """Plans SQL strings for one engine (its dialect and default schema), remembering them."""

    def __init__(self, dialect_name: str, default_schema: str | None) -> None:
        self._dialect = "mysql" if dialect_name in ("mysql", "mariadb") else dialect_name
        self._default_schema = default_schema.lower() if default_schema else None
        self._plans: OrderedDict[str, StatementPlan] = OrderedDict()
        self._lock = Lock()
        self._temporary_tables: set[str] = set()

    def plan(self, sql: str) -> StatementPlan:
        """The plan of ``sql``: cached, so the same string is parsed once. Never raises: SQL that
        trips the parser in an unexpected way gets the safe plan for its first word."""
        plan = self._plans.get(sql)
        if plan is not None:
            return plan
        try:
            plan = self._analyze(sql)
        except Exception as exc:  # a parser bug must not reach the application
            log.warning("could not analyze SQL (%r); treating it as unknown: %.200s", exc, sql)
            plan = self._unparsed(_first_word(sql))
        with self._lock:
            self._plans[sql] = plan
            if len(self._plans) > _PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        return plan

    def table_name(self, name: str, schema: str | None) -> str:
        """The key spelling of ``schema.name``; the default schema is left out."""
        table = normalize_table_name(name)
        if schema and schema.lower() != self._default_schema:
            return f"{normalize_table_name(schema)}.{table}"
        return table

    # -- analysis -------------------------------------------------------------------------------

    def _analyze(self, sql: str) -> StatementPlan:
        first = _first_word(sql)
        if first in ("SET", "USE"):
            return self._session_plan(first, sql)
        if first in _HARMLESS_COMMANDS:
            return StatementPlan(StatementKind.OTHER, frozenset())
        if first in ("INSERT", "REPLACE", "UPDATE", "DELETE"):
            sql = _DML_MODIFIERS_RE.sub(r"\1", sql, count=1)
        if first == "REPLACE":  # sqlglot has no REPLACE: as a write it is an INSERT
            sql = re.sub(r"^\s*REPLACE", "INSERT", sql, count=1, flags=re.IGNORECASE)
        try:
            parsed = sqlglot.parse(_PLACEHOLDER_RE.sub("?", sql), read=self._dialect)
            trees = [tree for tree in parsed if tree is not None]
        except (sqlglot.errors.SqlglotError, RecursionError):
            trees = []
        if len(trees) > 1:  # a script: whatever it contains, treat it as writing anything
            return StatementPlan(StatementKind.WRITE, frozenset({ALL_TABLES}))
        if not trees:
            return self._unparsed(first)
        tree = trees[0]
        if isinstance(tree, _DML_TYPES):
            return StatementPlan(StatementKind.WRITE, self._written_tables(tree))
        if isinstance(tree, _DDL_TYPES):
            return self._ddl_plan(tree, sql)
        if isinstance(tree, exp.Query):
            return self._read_plan(tree)
        if isinstance(tree, _OTHER_TYPES):
            return StatementPlan(StatementKind.OTHER, frozenset())
        if isinstance(tree, exp.Command) and _first_word(str(tree.this)) in _HARMLESS_COMMANDS:
            return StatementPlan(StatementKind.OTHER, frozenset())
        # GRANT, CALL, RENAME, LOAD DATA, OPTIMIZE...: may change anything.
        return StatementPlan(StatementKind.WRITE, frozenset({ALL_TABLES}))

    def _session_plan(self, first: str, sql: str) -> StatementPlan:
        """``SET`` and ``USE``: most are harmless; some wrap or change what later SQL does."""
        if first == "USE":
            match = _USE_RE.match(sql)
            schema = match.group(1).lower() if match else None
            if schema is not None and schema == self._default_schema:
                return StatementPlan(StatementKind.OTHER, frozenset())
            return StatementPlan(StatementKind.SESSION, frozenset({ALL_TABLES}))
        wrapped = _SET_STATEMENT_RE.match(sql)
        if wrapped:  # the statement after FOR is what runs (with session variables changed)
            inner = self._analyze(wrapped.group(1))
            if inner.kind is StatementKind.READ:
                return StatementPlan(
                    StatementKind.READ, inner.tables, uncacheable="SET STATEMENT ... FOR"
                )
            return inner
        if _AUTOCOMMIT_RE.search(sql) or _READ_UNCOMMITTED_RE.search(sql):
            return StatementPlan(StatementKind.SESSION, frozenset({ALL_TABLES}))
        return StatementPlan(StatementKind.OTHER, frozenset())

    def _unparsed(self, first: str) -> StatementPlan:
        if first in ("SELECT", "WITH", "VALUES", "TABLE"):
            return StatementPlan(StatementKind.READ, frozenset(), uncacheable="unparseable SQL")
        return StatementPlan(StatementKind.WRITE, frozenset({ALL_TABLES}))

    def _read_plan(self, tree: exp.Query) -> StatementPlan:
        tables: set[str] = set()
        reason: str | None = None
        for table in tree.find_all(exp.Table):
            schema = table.db.lower() if table.db else ""
            name = table.name.lower()
            if not name or name in _PSEUDO_TABLES:
                continue
            if schema in _SYSTEM_SCHEMAS or name in _SYSTEM_TABLES:
                reason = f"reads system table {table.sql()}"
            tables.add(self.table_name(table.name, table.db or None))
        if temporary := tables & self._temporary_tables:
            reason = f"reads temporary table {sorted(temporary)[0]}"
        for select in tree.find_all(exp.Select):
            if select.args.get("locks"):
                reason = "locking read (FOR UPDATE / FOR SHARE)"
        for node in tree.find_all(exp.Func, exp.Parameter, exp.SessionParameter, exp.Into):
            reason = _volatility(node) or reason
        return StatementPlan(StatementKind.READ, frozenset(tables), uncacheable=reason)

    def _written_tables(self, tree: exp.Expression) -> frozenset[str]:
        """Tables outside any subquery: the targets (multi-table UPDATE/DELETE give several).

        A target's alias counts as a table name too: if sqlglot misread a keyword it does not know
        as the table (``UPDATE <keyword> employee``), the real table is in the alias, and naming
        a table that does not exist only costs an unneeded bump.
        """
        tables: set[str] = set()
        for table in tree.find_all(exp.Table):
            if table.name and table.find_ancestor(exp.Select, exp.Subquery) is None:
                tables.add(self.table_name(table.name, table.db or None))
                if table.alias:
                    tables.add(self.table_name(table.alias, table.db or None))
        return frozenset(tables) or frozenset({ALL_TABLES})

    def _ddl_plan(self, tree: exp.Expression, sql: str) -> StatementPlan:
        tables = {self.table_name(t.name, t.db or None) for t in tree.find_all(exp.Table) if t.name}
        if isinstance(tree, exp.Create) and re.search(r"\bTEMPORARY\b", sql, re.IGNORECASE):
            with self._lock:
                self._temporary_tables.update(tables)
                # statements planned before now read these names as plain tables: plan them again
                self._plans.clear()
        return StatementPlan(StatementKind.DDL, frozenset(tables) or frozenset({ALL_TABLES}))


def _first_word(sql: str) -> str:
    match = _FIRST_WORD_RE.match(sql)
    return match.group(1).upper() if match else ""


def _volatility(node: exp.Expr) -> str | None:
    """Why ``node`` makes a result unfit for sharing, or None."""
    if isinstance(node, exp.Into):
        return "SELECT ... INTO"
    if isinstance(node, exp.Parameter | exp.SessionParameter):
        return "reads a session or server variable"
    if isinstance(node, exp.Anonymous):
        # Not a function sqlglot knows: a stored function (may write) or a volatile builtin.
        return f"calls {str(node.this).upper()}(), which may not be deterministic"
    name = type(node).__name__
    if name in _VOLATILE_FUNCTIONS or name.startswith(_VOLATILE_PREFIXES):
        return f"calls {node.sql()}, which is not deterministic"
    return None
