"""``python -m bench``: load the seed's schema at realistic size, time five queries in five modes
side by side, measure the cache's footprint and scaling, and report against the targets."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, selectinload
from tqdm import tqdm

from bench import budget, modes, report, scaling
from bench.schema import Department, Employee, ensure_database, load
from bench.servers import ThrowawayRedis
from sa_redis_cache.round_trips import RedisCommandLog, round_trips

Query = Callable[[Session], Any]


def queries(employees: int) -> dict[str, Query]:
    pk = employees // 2 + 1
    return {
        "get by pk": lambda s: s.get(Employee, pk),
        "page of 50": lambda s: s.execute(
            select(Employee, Department)
            .join(Employee.department)
            .order_by(Employee.id)
            .limit(50)
            .offset(500)
        ).all(),
        "join by department name": lambda s: s.execute(
            select(Employee.id, Employee.name, Department.id, Department.name)
            .select_from(Employee)
            .outerjoin(Department)
            .where(Department.name == "dept-7")
        ).all(),
        "count": lambda s: s.scalar(
            select(func.count(Employee.id)).where(Employee.department_id == 7)
        ),
        "selectinload": lambda s: [
            len(d.employees)
            for d in s.scalars(
                select(Department)
                .where(Department.id == 7)
                .options(selectinload(Department.employees))
            )
        ],
    }


@dataclass
class QueryResult:
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    round_trips_per_hit: float = 0.0
    round_trips_per_miss: float = 0.0
    commands_per_hit: float = 0.0
    commands_per_miss: float = 0.0
    bytes_per_entry: float = 0.0
    entries_per_request: float = 0.0


def request(mode: modes.Mode, query: Query) -> float:
    """One whole request (a fresh Session), timed; the mode's untimed preparation first."""
    mode.before_each()
    started = time.perf_counter_ns()
    mode.run(query)
    return (time.perf_counter_ns() - started) / 1e6


def time_side_by_side(
    all_modes: list[modes.Mode], query: Query, repeat: int
) -> dict[str, list[float]]:
    """Interleave the modes in small rounds so that machine noise spreads over all of them."""
    samples: dict[str, list[float]] = {m.name: [] for m in all_modes}
    for mode in all_modes:  # warm-up: connections, compiled SQL, the hot entry
        for _ in range(3):
            request(mode, query)
    rounds = max(1, repeat // 20)
    for index in range(repeat):
        for mode in all_modes if (index // rounds) % 2 == 0 else reversed(all_modes):
            samples[mode.name].append(request(mode, query))
    return samples


def server_commands(client: redis.Redis) -> int:
    """Commands the server ran, those inside scripts included."""
    return sum(
        int(v["calls"])
        for k, v in client.info("commandstats").items()
        if k not in ("cmdstat_info", "cmdstat_scan", "cmdstat_unlink")
    )


def footprint(
    cold: modes.Mode,
    hot: modes.Mode,
    cache_client: redis.Redis,
    sent: RedisCommandLog,
    query: Query,
    result: QueryResult,
    iterations: int = 20,
) -> None:
    for label, mode in (("miss", cold), ("hit", hot)):
        request(mode, query)
        trips = commands = 0
        for _ in range(iterations):
            mode.before_each()
            before = server_commands(cache_client)
            counted = len(sent.commands)
            mode.run(query)
            trips += round_trips(sent.commands[counted:])
            commands += server_commands(cache_client) - before
        setattr(result, f"round_trips_per_{label}", trips / iterations)
        setattr(result, f"commands_per_{label}", commands / iterations)
    modes.drop_entries(cache_client)
    request(hot, query)
    sizes = [cache_client.strlen(k) for k in cache_client.scan_iter(match="{bench}:e:*")]
    result.entries_per_request = len(sizes)
    result.bytes_per_entry = statistics.fmean(sizes) if sizes else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--employees", type=int, default=100_000)
    parser.add_argument("--departments", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=200, help="timed requests per query and mode")
    parser.add_argument("--smoke", action="store_true", help="tiny data, seconds: checks it runs")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "SA_REDIS_CACHE_BENCH_URL", "mysql+mysqldb://root@127.0.0.1:3306/sa_redis_cache_bench"
        ),
    )
    parser.add_argument("--redis-url", help="default: a throwaway redis-server of the bench's own")
    parser.add_argument("--output", type=Path, help="where the report goes (default: docs/)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.employees, args.departments, args.repeat = 300, 10, 6
    output = args.output or (Path(tempfile.mkdtemp()) if args.smoke else Path("docs"))
    output.mkdir(parents=True, exist_ok=True)

    with ThrowawayRedis(args.redis_url) as redis_url:
        ensure_database(args.database_url)
        print(f"loading {args.departments} departments and {args.employees} employees...")
        engine = create_engine(args.database_url)
        load(engine, args.departments, args.employees)
        engine.dispose()

        sent = RedisCommandLog()
        cold, hot, cache = modes.with_cache(args.database_url, redis_url, sent)
        loop = asyncio.new_event_loop()
        async_modes, async_cache = modes.async_modes(args.database_url, redis_url, loop)
        all_modes = [
            modes.no_cache(args.database_url),
            cold,
            hot,
            modes.floor(args.database_url, redis_url),
            modes.dogpile_peer(args.database_url, redis_url),
            modes.hot_lookup_in_memory(args.database_url, redis_url),
            modes.memory_only(args.database_url),
            *async_modes,
        ]
        client = cache.client
        assert isinstance(client, redis.Redis)
        results: dict[str, QueryResult] = {}
        chosen = queries(args.employees)
        try:
            for name, query in tqdm(chosen.items(), desc="queries", unit="query"):
                result = results[name] = QueryResult()
                result.samples_ms = time_side_by_side(all_modes, query, args.repeat)
                footprint(cold, hot, client, sent, query, result)
            parts = {name: budget.breakdown(r.samples_ms) for name, r in results.items()}
            calls = budget.single_calls(
                args.database_url, redis_url, args.employees // 2 + 1, repeat=args.repeat * 10
            )
            scale = scaling.run(
                args.database_url,
                redis_url,
                chosen["page of 50"],
                smoke=args.smoke,
                employees=args.employees,
            )
        finally:
            for mode in all_modes:
                mode.close()
            cache.clear()
            async_cache.uninstall(async_cache.engines[0])
            loop.run_until_complete(async_cache.aclear())
            loop.run_until_complete(async_cache.client.aclose())  # type: ignore[union-attr]
            loop.close()

    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    text = report.render(results, scale, parts, calls, args, machine)
    print(text)
    path = output / "benchmarks.md"
    kept = report.binlog_section(path.read_text()) if path.exists() else ""
    path.write_text(report.replace_binlog_section(text, kept) if kept else text)
    report.plot(results, output / "benchmarks.png")
    print(f"report: {output / 'benchmarks.md'}, plot: {output / 'benchmarks.png'}")
    return 0
