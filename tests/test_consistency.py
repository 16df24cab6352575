"""The consistency checker, bounded: several writer and reader processes on MariaDB and Redis;
zero stale reads, and a hit rate that shows the cache served most reads."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy.engine import URL

from sa_redis_cache import QueryCache
from tests.consistency import Settings, run, run_threads


def test_no_stale_reads_under_concurrent_writers(
    mysql_url: URL, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=mysql_url.render_as_string(hide_password=False),
        redis_url=redis_url,
        namespace=f"test-consistency-{uuid.uuid4().hex[:8]}",
        readers=4,
        writers=2,
        reads_per_reader=5000,
        log_dir=str(tmp_path),
    )
    try:
        report = run(settings)
    finally:
        QueryCache.from_url(redis_url, namespace=settings.namespace).clear()
    print(report.summary())
    assert report.reads >= 20_000
    assert report.commits >= 50
    assert report.stale == []
    assert report.hit_rate >= 0.5, report.summary()


def test_no_stale_reads_with_threads_sharing_one_engine_and_cache(
    mysql_url: URL, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=mysql_url.render_as_string(hide_password=False),
        redis_url=redis_url,
        namespace=f"test-threads-{uuid.uuid4().hex[:8]}",
        readers=4,
        writers=2,
        reads_per_reader=2000,
        log_dir=str(tmp_path),
    )
    try:
        report = run_threads(settings)
    finally:
        QueryCache.from_url(redis_url, namespace=settings.namespace).clear()
    print(report.summary())
    assert report.reads >= 8_000 and report.commits >= 20
    assert report.stale == []
    assert report.hits > 0


def test_no_stale_reads_with_async_readers_and_writers(
    mysql_url: URL, redis_url: str, tmp_path: Path
) -> None:
    """Asyncio applications: reader and writer processes of three AsyncSession tasks each, on
    asyncmy and a redis.asyncio cache."""
    settings = Settings(
        database_url=mysql_url.render_as_string(hide_password=False),
        redis_url=redis_url,
        namespace=f"test-async-{uuid.uuid4().hex[:8]}",
        readers=2,
        writers=1,
        tasks=3,
        reads_per_reader=1500,
        log_dir=str(tmp_path),
    )
    try:
        report = run(settings)
    finally:
        QueryCache.from_url(redis_url, namespace=settings.namespace).clear()
    print(report.summary())
    assert report.reads >= 9000 and report.commits >= 50
    assert report.stale == []
    assert report.hit_rate >= 0.5, report.summary()


def test_near_cache_reads_miss_no_commit_older_than_the_lag(
    mysql_url: URL, redis_url: str, tmp_path: Path
) -> None:
    """Readers with a near cache: a read may miss a commit that returned less than the lag
    before it started, never an older one; the report says by how much reads were late."""
    settings = Settings(
        database_url=mysql_url.render_as_string(hide_password=False),
        redis_url=redis_url,
        namespace=f"test-near-{uuid.uuid4().hex[:8]}",
        readers=4,
        writers=2,
        reads_per_reader=3000,
        near_cache=10_000,
        near_cache_lag=0.1,
        log_dir=str(tmp_path),
    )
    try:
        report = run(settings)
    finally:
        QueryCache.from_url(redis_url, namespace=settings.namespace).clear()
    print(report.summary())
    assert report.reads >= 12_000 and report.commits >= 50
    assert report.stale == []
    assert report.near_hits > report.reads // 4, report.summary()  # the near cache served
