"""Table detection on SQL strings: what a statement reads or writes, and when the parser cannot
tell, the safe answer (a read is not cached, a write invalidates everything)."""

from __future__ import annotations

import pytest

from sa_redis_cache.tables import ALL_TABLES, StatementKind, TableDetector

READ, WRITE, DDL, OTHER = (
    StatementKind.READ, StatementKind.WRITE, StatementKind.DDL, StatementKind.OTHER
)  # fmt: skip
ALL = {ALL_TABLES}


@pytest.mark.parametrize(
    ("sql", "kind", "tables"),
    [
        ("SELECT e.id FROM employee e JOIN department d ON d.id = e.department_id WHERE e.id = %s",
         READ, {"employee", "department"}),
        ("SELECT * FROM shop.Employee", READ, {"employee"}),  # the default schema folds away
        ("SELECT * FROM other.employee", READ, {"other.employee"}),
        ("WITH c AS (SELECT * FROM t1) SELECT * FROM c JOIN t2 ON 1 = 1", READ, {"t1", "t2", "c"}),
        ("(SELECT 1 FROM a) UNION (SELECT 2 FROM b)", READ, {"a", "b"}),
        ("SELECT * FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.x = %(p)s)", READ, {"a", "b"}),
        ("INSERT INTO a (x) SELECT y FROM b", WRITE, {"a"}),
        ("UPDATE a, b SET a.x = b.y WHERE a.id = b.id", WRITE, {"a", "b"}),
        ("UPDATE LOW_PRIORITY IGNORE employee SET name = %s", WRITE, {"employee"}),
        ("DELETE QUICK FROM employee WHERE id = 3", WRITE, {"employee"}),
        ("DELETE a FROM a JOIN b ON a.id = b.id WHERE b.z = %s", WRITE, {"a", "b"}),
        ("DELETE FROM a WHERE id IN (SELECT id FROM b)", WRITE, {"a"}),
        ("REPLACE INTO a VALUES (1)", WRITE, {"a"}),
        ("INSERT INTO a (x) VALUES (%s) ON DUPLICATE KEY UPDATE x = VALUES(x)", WRITE, {"a"}),
        ("ALTER TABLE Employee ADD COLUMN z INT", DDL, {"employee"}),
        ("TRUNCATE TABLE a", DDL, {"a"}),
        ("DROP TABLE IF EXISTS a, b", DDL, {"a", "b"}),
        ("CREATE INDEX ix ON a (x)", DDL, {"a", }),
        ("RENAME TABLE a TO b", WRITE, ALL),
        ("CALL refresh_totals()", WRITE, ALL),
        ("EXECUTE IMMEDIATE 'DELETE FROM a'", WRITE, ALL),
        ("LOAD DATA INFILE 'x' INTO TABLE t", WRITE, ALL),
        ("SELECT 1; DELETE FROM a", WRITE, ALL),
        ("total nonsense", WRITE, ALL),
        ("SAVEPOINT sa_savepoint_1", OTHER, set()),
        ("RELEASE SAVEPOINT sa_savepoint_1", OTHER, set()),
        ("SET NAMES utf8mb4", OTHER, set()),
        ("SHOW TABLES", OTHER, set()),
    ],
)  # fmt: skip
def test_tables_and_kind(sql: str, kind: StatementKind, tables: set[str]) -> None:
    plan = TableDetector("mysql", "shop").plan(sql)
    assert plan.kind is kind
    assert plan.tables == tables or (kind is DDL and plan.tables >= tables)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT * FROM t FOR UPDATE", "locking read"),
        ("SELECT * FROM t LOCK IN SHARE MODE", "locking read"),
        ("SELECT * FROM t FOR SHARE", "locking read"),
        ("SELECT NOW() FROM t", "NOW"),
        ("SELECT CURRENT_TIMESTAMP", "not deterministic"),
        ("SELECT * FROM t ORDER BY RAND()", "not deterministic"),
        ("SELECT UUID()", "not deterministic"),
        ("SELECT my_stored_function(x) FROM t", "MY_STORED_FUNCTION"),
        ("SELECT @@version", "variable"),
        ("SELECT @v", "variable"),
        ("SELECT x INTO @v FROM t", "variable"),
        ("SELECT * FROM information_schema.tables", "system table"),
        ("SELECT * FROM t WHERE (((", "unparseable"),
    ],
)
def test_reads_that_must_not_be_cached(sql: str, reason: str) -> None:
    plan = TableDetector("mysql", None).plan(sql)
    assert plan.kind is READ
    assert plan.uncacheable is not None and reason in plan.uncacheable


def test_temporary_tables_are_never_cached() -> None:
    detector = TableDetector("mysql", None)
    assert detector.plan("SELECT * FROM scratch").uncacheable is None
    detector = TableDetector("mysql", None)
    assert detector.plan("CREATE TEMPORARY TABLE scratch (x INT)").kind is DDL
    assert "temporary" in (detector.plan("SELECT * FROM scratch").uncacheable or "")


def test_deterministic_builtins_are_cacheable() -> None:
    sql = "SELECT LOWER(name), COALESCE(a, b), CONCAT(a, b), ROUND(x, 2), COUNT(*) FROM t"
    assert TableDetector("mysql", None).plan(sql).uncacheable is None
