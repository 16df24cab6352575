"""The benchmark report: Markdown tables (also printed) and a PNG plot, the targets checked."""

from __future__ import annotations

import datetime
import statistics
from pathlib import Path
from typing import Any

MODES = ("no cache", "cold", "hot", "floor", "dogpile")
ASYNC_MODES = ("async no cache", "async cold", "async hot", "async floor")


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _median(result: Any, mode: str) -> float:
    return statistics.median(result.samples_ms[mode])


def targets(results: dict[str, Any], scale: dict[str, Any]) -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []
    for name in ("page of 50", "join by department name"):
        speedup = _median(results[name], "no cache") / _median(results[name], "hot")
        checks.append(
            (f"{name}: hot at least 5x faster than no cache", speedup >= 5, f"{speedup:.1f}x")
        )
    pk = results["get by pk"]
    ratio = _median(pk, "hot") / _median(pk, "no cache")
    checks.append(
        ("get by pk: hot never slower than no cache", ratio <= 1, f"hot/no cache {ratio:.2f}")
    )
    worst_floor = max(_median(r, "hot") / _median(r, "floor") for r in results.values())
    checks.append(
        ("hit path at most 1.2x the floor", worst_floor <= 1.2, f"worst {worst_floor:.2f}x")
    )
    worst_async = max(_median(r, "async hot") / _median(r, "async floor") for r in results.values())
    checks.append(
        (
            "async hit path at most 1.2x its async floor",
            worst_async <= 1.2,
            f"worst {worst_async:.2f}x",
        )
    )
    worst_cold = max(_median(r, "cold") / _median(r, "no cache") for r in results.values())
    checks.append(("cold at most 1.15x no cache", worst_cold <= 1.15, f"worst {worst_cold:.2f}x"))
    trips = max(r.round_trips_per_hit for r in results.values() if r.entries_per_request <= 1)
    checks.append(
        ("one Redis round trip per hit", trips == 1, f"{trips:g} per single-statement hit")
    )
    checks.append(
        (
            "a commit that wrote adds one round trip",
            False,
            "2 by design: an announcement before the database commit, the bump after it",
        )
    )
    for key, label in (("entries", "entries in Redis"), ("tables", "tables in Redis")):
        values = list(scale[key].values())
        spread = max(values) / min(values)
        checks.append(
            (f"hot latency flat (10%) across {label}", spread <= 1.10, f"max/min {spread:.2f}")
        )
    return checks


def render(
    results: dict[str, Any],
    scale: dict[str, Any],
    parts: dict[str, dict[str, float]],
    calls: dict[str, float],
    args: Any,
    machine: str,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine},",
        "MariaDB and Redis on loopback; "
        f"{args.departments} departments, {args.employees} employees; {args.repeat} whole",
        "requests (a fresh ORM Session each) per query and mode, the modes interleaved.",
        "Reproduce with `make bench` (or `.venv/bin/python -m bench --help` for sizes). Ratios",
        "matter, not absolute numbers: the machines are shared and noisy.",
        "",
        "Modes: **no cache** (plain SQLAlchemy), **cold** (a miss, store included), **hot**",
        "(a hit), **floor** (the ORM fed from rows in memory plus one Redis GET of the same",
        "size: the best any Redis-backed cache can do), **dogpile** (SQLAlchemy's dogpile",
        "example pattern: a pickled FrozenResult, merged on a hit; no invalidation).",
        "",
        "| query | "
        + " | ".join(f"{m} median / p99 (ms)" for m in MODES)
        + " | no cache / hot | cold / no cache | hot / floor |",
        "|---|" + "---|" * (len(MODES) + 3),
    ]
    for name, result in results.items():
        cells = [f"{_median(result, m):.3f} / {_p99(result.samples_ms[m]):.3f}" for m in MODES]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {_median(result, 'no cache') / _median(result, 'hot'):.2f}x"
            + f" | {_median(result, 'cold') / _median(result, 'no cache'):.2f}x"
            + f" | {_median(result, 'hot') / _median(result, 'floor'):.2f}x |"
        )
    lines += [
        "",
        "| query | round trips per hit | per miss | Redis commands per hit | per miss "
        "(INFO commandstats, script-internal ones included) | entries per request "
        "| bytes per entry |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r.round_trips_per_hit:g} | {r.round_trips_per_miss:g} | "
            f"{r.commands_per_hit:g} | {r.commands_per_miss:g} | {r.entries_per_request:g} | "
            f"{r.bytes_per_entry:,.0f} |"
        )
    lines += _async_table(results)
    lines += _where_the_time_goes(parts, calls)
    lines += [
        "",
        "## Scaling",
        "",
        "| entries in Redis | hot page of 50, median (ms) |",
        "|---|---|",
    ]
    lines += [f"| {n:,} | {ms:.3f} |" for n, ms in scale["entries"].items()]
    lines += ["", "| tables with versions in Redis | hot page of 50, median (ms) |", "|---|---|"]
    lines += [f"| {n:,} | {ms:.3f} |" for n, ms in scale["tables"].items()]
    lines += [
        "",
        "| tables written per transaction | with cache (ms) | without (ms) | added (ms) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {w:.3f} | {wo:.3f} | {w - wo:.3f} |" for n, (w, wo) in scale["commits"].items()
    ]
    lines += ["", "| processes | hot requests per second (all together) |", "|---|---|"]
    lines += [f"| {n} | {rate:,.0f} |" for n, rate in scale["throughput"].items()]
    lines += ["", "## Targets", "", "| target | holds | measured |", "|---|---|---|"]
    lines += [
        f"| {t} | {'yes' if ok else 'NO'} | {why} |" for t, ok, why in targets(results, scale)
    ]
    return "\n".join(lines) + "\n"


def _async_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Async",
        "",
        "The same queries on an `AsyncEngine` (asyncmy), each request an `AsyncSession` running",
        "the query through `run_sync`, the cache on a `redis.asyncio` client; timed in the same",
        "interleaved rounds as the sync modes above. Medians (ms).",
        "",
        "| query | "
        + " | ".join(ASYNC_MODES)
        + " | no cache / hot | hot / floor | async hot / sync hot |",
        "|---|" + "---|" * (len(ASYNC_MODES) + 3),
    ]
    for name, r in results.items():
        cells = " | ".join(f"{_median(r, m):.3f}" for m in ASYNC_MODES)
        lines.append(
            f"| {name} | {cells}"
            f" | {_median(r, 'async no cache') / _median(r, 'async hot'):.2f}x"
            f" | {_median(r, 'async hot') / _median(r, 'async floor'):.2f}x"
            f" | {_median(r, 'async hot') / _median(r, 'hot'):.2f}x |"
        )
    return lines


def _where_the_time_goes(parts: dict[str, dict[str, float]], calls: dict[str, float]) -> list[str]:
    headings = list(next(iter(parts.values())))
    lines = [
        "",
        "## Where the time goes",
        "",
        "Each request split into parts, from two more modes timed in the same interleaved rounds:",
        "*memory only* (the floor without its GET) and *hot, lookup from memory* (a hit whose",
        "lookup reply is replayed from memory). Medians in ms; differences of medians, so a small",
        "part can come out slightly negative on a noisy machine.",
        "",
        "| query | " + " | ".join(headings) + " |",
        "|---|" + "---|" * len(headings),
    ]
    for name, split in parts.items():
        lines.append(f"| {name} | " + " | ".join(f"{split[h]:.3f}" for h in headings) + " |")
    lines += [
        "",
        "The single calls a request is made of, timed on their own, interleaved (median us):",
        "",
        "| call | median (us) |",
        "|---|---|",
    ]
    lines += [f"| {name} | {us:.1f} |" for name, us in calls.items()]
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    width = 0.16
    figure, axes = plt.subplots(figsize=(11, 5))
    for index, mode in enumerate(MODES):
        values = [_median(results[n], mode) for n in names]
        axes.bar([i + (index - 2) * width for i in range(len(names))], values, width, label=mode)
    axes.set_xticks(range(len(names)), names)
    axes.set_yscale("log")
    axes.set_ylabel("median whole-request latency (ms, log scale)")
    axes.set_title("sa_redis_cache: latency per query and mode")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


BINLOG_MARKER = "<!-- written by python -m bench.binlog; python -m bench keeps it -->"


def binlog_section(text: str) -> str:
    """The binlog watcher's section of a benchmarks.md (empty if it has none)."""
    index = text.find(BINLOG_MARKER)
    return "" if index < 0 else text[index:]


def replace_binlog_section(text: str, section: str) -> str:
    index = text.find(BINLOG_MARKER)
    head = text if index < 0 else text[:index]
    return head.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
