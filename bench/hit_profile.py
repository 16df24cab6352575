"""``python -m bench.hit_profile``: cProfile of hot requests for one benchmark query, so that the
claims in docs/benchmarks.md about where a hit's time goes can be checked function by function.

Needs the benchmark's data loaded (``python -m bench`` once, or ``--smoke``) and a Redis.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from bench.cli import queries
from sa_redis_cache import QueryCache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hit_profile", description=__doc__)
    parser.add_argument("--query", default="get by pk", choices=list(queries(100_000)))
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--employees", type=int, default=100_000)
    parser.add_argument("--top", type=int, default=30, help="functions shown")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "SA_REDIS_CACHE_BENCH_URL", "mysql+mysqldb://root@127.0.0.1:3306/sa_redis_cache_bench"
        ),
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)

    query = queries(args.employees)[args.query]
    engine = create_engine(args.database_url)
    cache = QueryCache.from_url(args.redis_url, namespace=f"bench-profile-{os.getpid()}")
    cache.install(engine)
    sessions = sessionmaker(engine, execution_options={"redis_cache": True})

    def request() -> None:
        with sessions() as session:
            query(session)

    try:
        for _ in range(20):  # the entry stored, connections and compiled SQL warm
            request()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.requests):
            request()
        profiler.disable()
    finally:
        cache.uninstall(engine)
        cache.clear()
        engine.dispose()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(args.top)
    print(f"{args.requests} hot requests of {args.query!r}; own time per function:")
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
