"""The benchmark runs end to end on tiny data (seconds), so that it cannot rot. It asserts what it
reports, never how fast anything was."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import URL

from bench.cli import main


def test_benchmark_smoke_run_writes_its_report(
    mysql_url: URL, redis_url: str, tmp_path: Path
) -> None:
    database = mysql_url.set(database=f"{mysql_url.database}_bench")
    try:
        code = main([
            "--smoke", "--output", str(tmp_path),
            "--database-url", database.render_as_string(hide_password=False),
        ])  # fmt: skip
    finally:
        server = create_engine(mysql_url)
        with server.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{database.database}`")
        server.dispose()
    assert code == 0
    text = (tmp_path / "benchmarks.md").read_text()
    for heading in ("get by pk", "page of 50", "join by department name", "count", "selectinload"):
        assert f"| {heading} |" in text
    assert "| get by pk | 1 | 1 |" in text  # one round trip per hit, one per miss
    assert "## Targets" in text and "## Where the time goes" in text
    assert "## Async" in text and "| get by pk | " in text.split("## Async")[1]
    assert "| database: ROLLBACK (DBAPI; every request sends two, cached or not) |" in text
    assert (tmp_path / "benchmarks.png").stat().st_size > 10_000
