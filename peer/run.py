"""``make peer``: SQLAlchemy's own ``test/orm``, without and with the cache, per backend.

Steps, each skipped when already done:

1. ``pip download`` the source distribution of exactly the installed SQLAlchemy version (it ships
   ``test/``) into ``.peer/`` (git-ignored) and unpack it; its ``lib/sqlalchemy`` becomes a link
   to the installed package, so the suite tests the library the cache runs on (compiled
   extensions included).
2. Per backend, run the suite twice with junit XML: plain (the baseline) and with
   ``-p peer.plugin`` (the cache on every engine, every read cached). On MariaDB each run gets a
   fresh database of its own; ``test_schema`` and ``test_schema_2``, whose names the suite fixes,
   are created if missing and dropped at the end only if this run created them.
3. Compare: a test that fails or errors with the cache but passed (or skipped) without it is a
   cache-only failure. Exit 1 if there is any, or if the cache served no hit (a run that proves
   nothing).

Arguments not known here go to pytest, e.g. ``python -m peer --backend sqlite
test/orm/test_events.py -k flags``; without a path the whole ``test/orm`` runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".peer"
BACKENDS = ("sqlite", "mariadb")
MODES = ("baseline", "cache")
MYSQL_URL = os.environ.get("SA_REDIS_CACHE_TEST_MYSQL_URL", "mysql+mysqldb://root@127.0.0.1:3306/")
RUN_ID = re.sub(r"\W", "_", os.environ.get("SA_REDIS_CACHE_TEST_ID") or "main")
DATABASE = f"sa_redis_cache_peer_{RUN_ID}"
"""The suite's database on MariaDB: this run's own, created afresh for each run, dropped after."""
FIXED_SCHEMAS = ("test_schema", "test_schema_2")
"""Databases SQLAlchemy's suite addresses by name (cross-schema tests) on MySQL/MariaDB."""
TIMEOUT = 600
"""Seconds one test may take (pytest-timeout) before it counts as failed instead of hanging."""

FAILING = ("failed", "error")
MAX_RERUN = 200
"""Cache-only failures are run again, alone and in both modes, when there are at most this many."""


@dataclass
class Run:
    backend: str
    mode: str
    label: str = ""
    """``rerun`` for the second look at the cache-only failures, each alone."""
    outcomes: dict[str, str] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    """Per test, the hits its body got from the cache (junit property ``cache_hits``)."""
    messages: dict[str, str] = field(default_factory=dict)
    """Per failing test, the first line of its failure or error."""
    seconds: float = 0.0
    exit_code: int = 0
    stats: dict[str, object] | None = None

    @property
    def name(self) -> str:
        return "-".join(p for p in (self.backend, self.mode, self.label) if p)

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peer", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backend",
        action="append",
        choices=BACKENDS,
        help="run only this backend (repeatable; default: all)",
    )
    parser.add_argument(
        "--mode", action="append", choices=MODES, help="run only this mode (default: both)"
    )
    parser.add_argument(
        "--own-mariadb",
        action="store_true",
        help="run the MariaDB suite on a throwaway server of its own (mariadbd on a free port, "
        "data in .peer/mariadb) instead of the shared one: other clients' metadata locks "
        "cannot stall it (see docs/peer.md)",
    )
    options, pytest_args = parser.parse_known_args(argv)
    if not any(arg.startswith("test/") for arg in pytest_args):
        pytest_args = ["test/orm", *pytest_args]
    backends = options.backend or list(BACKENDS)
    modes = options.mode or list(MODES)

    import sqlalchemy

    version = importlib.metadata.version("sqlalchemy")
    tree = prepare_tree(version, Path(sqlalchemy.__file__).resolve().parent)
    results = WORK / "results"
    results.mkdir(parents=True, exist_ok=True)

    runs: list[Run] = []
    reruns: dict[str, dict[str, Run]] = {}
    for backend in backends:
        with backend_database(backend, options.own_mariadb) as dburi:
            pair = {
                mode: run_suite(tree, backend, mode, dburi, pytest_args, results) for mode in modes
            }
            runs += pair.values()
            suspects = cache_only(pair)
            if suspects and len(suspects) <= MAX_RERUN:
                # a shared machine and server add noise: look again at each suspect on its own
                selection = results / f"{backend}-rerun.txt"
                selection.write_text("".join(f"{t}\n" for t in suspects))
                files = sorted({t.split("::")[0] for t in suspects})
                args = [*files, f"--peer-select={selection}"]
                reruns[backend] = {
                    mode: run_suite(tree, backend, mode, dburi, args, results, "rerun")
                    for mode in MODES
                }
    report = summarize(version, runs, reruns, pytest_args)
    (WORK / "summary.md").write_text(report.text)
    print()
    print(report.text)
    print(f"(also in {WORK / 'summary.md'}; junit XML and logs in {results})")
    return 0 if report.ok else 1


# -- the source tree -------------------------------------------------------------------------


def prepare_tree(version: str, installed: Path) -> Path:
    """The unpacked sdist of ``version``, its ``lib/sqlalchemy`` pointing at ``installed``."""
    WORK.mkdir(exist_ok=True)
    downloads = WORK / "downloads"
    sdist = downloads / f"sqlalchemy-{version}.tar.gz"
    if not sdist.exists():
        print(f"peer: downloading the source distribution of SQLAlchemy {version}", flush=True)
        # --no-binary for SQLAlchemy only: with :all: pip also builds its build requirements
        # (Cython...) from source just to read the sdist's metadata, which takes minutes
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                "sqlalchemy",
                f"sqlalchemy=={version}",
                "--dest",
                str(downloads),
            ],
            check=True,
        )
        if not sdist.exists():
            found = [p.name for p in downloads.iterdir()]
            raise SystemExit(f"peer: pip downloaded {found}, not {sdist.name}")
    tree = WORK / f"sqlalchemy-{version}"
    if not (tree / "test" / "orm").is_dir():
        print(f"peer: unpacking {sdist.name}", flush=True)
        with tarfile.open(sdist) as archive:
            archive.extractall(WORK, filter="data")
    lib = tree / "lib" / "sqlalchemy"
    if not lib.is_symlink() or lib.resolve() != installed:
        if lib.is_symlink() or lib.is_file():
            lib.unlink()
        elif lib.exists():
            shutil.rmtree(lib)
        lib.symlink_to(installed, target_is_directory=True)
    # the plugin is importable as peer.plugin without putting the whole checkout (its tests/,
    # alembic/ ...) on the suite's import path
    path_dir = WORK / "pythonpath"
    path_dir.mkdir(exist_ok=True)
    link = path_dir / "peer"
    if not link.is_symlink() or link.resolve() != Path(__file__).resolve().parent:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(Path(__file__).resolve().parent, target_is_directory=True)
    return tree


# -- databases -------------------------------------------------------------------------------


@contextmanager
def backend_database(backend: str, own_server: bool = False) -> Iterator[str | None]:
    """``--dburi`` for ``backend`` (None: the suite's default in-memory SQLite)."""
    if backend == "sqlite":
        yield None
        return
    if own_server:
        with own_mariadb() as server_url, _suite_databases(server_url) as dburi:
            yield dburi
    else:
        with _suite_databases(MYSQL_URL) as dburi:
            yield dburi


@contextmanager
def own_mariadb() -> Iterator[str]:
    """A throwaway MariaDB server on a free loopback port, stopped (by its pid) afterwards."""

    datadir = WORK / "mariadb"
    if datadir.exists():
        shutil.rmtree(datadir)
    datadir.mkdir(parents=True)
    subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={datadir / 'data'}",
            "--auth-root-authentication-method=normal",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(datadir / "mariadbd.log", "w")  # noqa: SIM115 (open while the server runs)
    server = subprocess.Popen(
        [
            "mariadbd",
            "--no-defaults",
            f"--datadir={datadir / 'data'}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={datadir / 'mariadbd.sock'}",
            "--user=root",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=256M",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            ["mariadb-admin", "-h", "127.0.0.1", "-P", str(port), "-u", "root", "ping"],
            capture_output=True,
        ).returncode:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"peer: mariadbd did not start; see {datadir / 'mariadbd.log'}")
            time.sleep(0.2)
        print(f"peer: a MariaDB server of its own on 127.0.0.1:{port} (pid {server.pid})")
        yield f"mysql+mysqldb://root@127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(60)
        log.close()
        shutil.rmtree(datadir, ignore_errors=True)


@contextmanager
def _suite_databases(server_url: str) -> Iterator[str]:
    """The suite's database (fresh per run) and its two fixed schemas on ``server_url``."""
    import MySQLdb
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    admin = MySQLdb.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
    )
    created: list[str] = []
    try:
        with admin.cursor() as cursor:
            for schema in FIXED_SCHEMAS:
                cursor.execute(
                    "SELECT 1 FROM information_schema.schemata WHERE schema_name=%s", (schema,)
                )
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE `{schema}` CHARACTER SET utf8mb4")
                    created.append(schema)
        yield url.set(database=DATABASE, query={"charset": "utf8mb4"}).render_as_string(False)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{DATABASE}`")
            for schema in created:
                cursor.execute(f"DROP DATABASE IF EXISTS `{schema}`")
        admin.close()


def _fresh_database(dburi: str) -> None:
    """Each run starts on an empty database: nothing a previous run left can change a result."""
    import MySQLdb
    from sqlalchemy.engine import make_url

    url = make_url(dburi)
    admin = MySQLdb.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
    )
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{url.database}`")
            cursor.execute(f"CREATE DATABASE `{url.database}` CHARACTER SET utf8mb4")
    finally:
        admin.close()


# -- one run ---------------------------------------------------------------------------------


def run_suite(
    tree: Path,
    backend: str,
    mode: str,
    dburi: str | None,
    pytest_args: list[str],
    results: Path,
    label: str = "",
) -> Run:
    run = Run(backend, mode, label)
    junit = results / f"{run.name}.xml"
    log = results / f"{run.name}.log"
    stats = results / f"{run.name}-stats.json"
    for stale in (junit, stats):
        stale.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        "pyproject.toml",
        *pytest_args,
        "-p",
        "no:cacheprovider",
        "-p",
        "no:sa_redis_cache",  # the project's fixtures plugin: not part of what is tested
        "--nomemory",
        "--notimingintensive",
        "--maxfail=1000000",
        f"--timeout={TIMEOUT}",
        f"--junitxml={junit}",
        "-p",
        "peer.plugin",  # in both modes: --peer-cache is the only difference
    ]
    if dburi is not None:
        _fresh_database(dburi)
        command.append(f"--dburi={dburi}")
    if mode == "cache":
        command += ["--peer-cache", f"--peer-stats={stats}"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(WORK / "pythonpath"), env.get("PYTHONPATH")) if p
    )
    print(f"peer: {run.name}: {' '.join(command[1:])}", flush=True)
    print(f"peer: {run.name}: log in {log}", flush=True)
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(
            command,
            cwd=tree,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        last_tenth = -1
        for line in process.stdout:
            out.write(line)
            progress = re.search(r"\[\s*(\d+)%\]\s*$", line)
            if progress and int(progress.group(1)) // 10 > last_tenth:
                last_tenth = int(progress.group(1)) // 10
                elapsed = time.monotonic() - started
                print(f"peer: {run.name}: {progress.group(1)}% ({elapsed:.0f} s)", flush=True)
        run.exit_code = process.wait()
    run.seconds = time.monotonic() - started
    if not junit.exists():
        message = f"peer: {run.name} wrote no junit XML (exit {run.exit_code}); see {log}"
        if not label:
            raise SystemExit(message)
        print(message, flush=True)  # a rerun that cannot select its tests: reported as absent
        return run
    run.outcomes, run.hits, run.messages = read_junit(junit)
    if stats.exists():
        run.stats = json.loads(stats.read_text())
    print(
        f"peer: {run.name}: {run.count('passed')} passed, {run.count('failed')} failed, "
        f"{run.count('error')} errors, {run.count('skipped')} skipped in {run.seconds:.0f} s",
        flush=True,
    )
    return run


def read_junit(path: Path) -> tuple[dict[str, str], dict[str, int], dict[str, str]]:
    """Per test id: passed, failed, error or skipped (the worst of its phases); the hits its
    body got; the first line of its failure."""
    rank = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
    outcomes: dict[str, str] = {}
    hits: dict[str, int] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(path).iter("testcase"):
        test_id = _test_id(case.get("classname", ""), case.get("name", ""))
        for prop in case.iter("property"):
            if prop.get("name") == "cache_hits":
                hits[test_id] = hits.get(test_id, 0) + int(prop.get("value") or 0)
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                found = "failed" if child.tag == "failure" else child.tag
                if found in FAILING and test_id not in messages:
                    message = (child.get("message") or "").strip().splitlines() or [""]
                    messages[test_id] = message[0][:200]
                if rank[found] > rank[outcome]:
                    outcome = found
        previous = outcomes.get(test_id)
        if previous is None or rank[outcome] > rank[previous]:
            outcomes[test_id] = outcome
    return outcomes, hits, messages


def _test_id(classname: str, name: str) -> str:
    """``test.orm.test_events.ORMExecuteTest``, ``name`` ->
    ``test/orm/test_events.py::ORMExecuteTest::name``."""
    parts = classname.split(".")
    module = [p for p in parts if not p[:1].isupper()]
    classes = parts[len(module) :]
    return "::".join(["/".join(module) + ".py", *classes, name])


# -- the comparison --------------------------------------------------------------------------


@dataclass
class Report:
    text: str
    ok: bool


def cache_only(pair: dict[str, Run]) -> list[str]:
    """Tests that fail or error with the cache and passed (or were skipped) without it."""
    if set(pair) != set(MODES):
        return []
    base, cached = pair["baseline"].outcomes, pair["cache"].outcomes
    return sorted(t for t, o in cached.items() if o in FAILING and base.get(t) not in FAILING)


def summarize(
    version: str, runs: list[Run], reruns: dict[str, dict[str, Run]], pytest_args: list[str]
) -> Report:
    lines = [
        f"SQLAlchemy {version} `{' '.join(pytest_args)}`, Python {sys.version.split()[0]}, "
        f"sa_redis_cache {importlib.metadata.version('sa_redis_cache')}",
        "",
        "| backend | run | passed | failed | errors | skipped | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run.backend} | {run.mode} | {run.count('passed')} | {run.count('failed')} | "
            f"{run.count('error')} | {run.count('skipped')} | {run.seconds / 60:.1f} |"
        )
    ok = True
    for run in runs:
        if run.stats is not None:
            counters = ", ".join(f"{k} {v}" for k, v in run.stats.items() if k != "namespace")
            served = sum(1 for n in run.hits.values() if n)
            lines += [
                "",
                f"{run.backend}, the cache's counters: {counters}; "
                f"{served} tests got at least one hit in their body",
            ]
            if not run.stats.get("hits"):
                lines.append("  NO HIT: the cache served nothing, this run proves nothing")
                ok = False
    by_backend: dict[str, dict[str, Run]] = {}
    for run in runs:
        by_backend.setdefault(run.backend, {})[run.mode] = run
    for backend, pair in by_backend.items():
        if set(pair) != set(MODES):
            continue
        base, cached = pair["baseline"].outcomes, pair["cache"].outcomes
        only_cache = cache_only(pair)
        again = reruns.get(backend)
        only_base = sorted(
            t for t, o in base.items() if o in FAILING and cached.get(t) not in FAILING
        )
        both = sum(1 for t, o in cached.items() if o in FAILING and base.get(t) in FAILING)
        missing = sorted(set(base) ^ set(cached))
        lines += [
            "",
            f"{backend}: {len(only_cache)} fail only with the cache; {both} fail in both runs; "
            f"{len(only_base)} fail only without it",
        ]
        for t in only_cache:
            lines.append(
                f"  cache only: {t} ({cached[t]}, {pair['cache'].hits.get(t, 0)} hits; "
                f"baseline: {base.get(t, 'absent')})"
            )
            lines.append(f"    {pair['cache'].messages.get(t, '')}")
            if again is not None:
                alone = {mode: again[mode].outcomes.get(t, "absent") for mode in MODES}
                if "absent" in alone.values():
                    verdict = "could not be run alone"
                elif alone["cache"] in FAILING and alone["baseline"] not in FAILING:
                    verdict = "reproduces"
                else:
                    verdict = "does not reproduce"
                lines.append(
                    f"    run again alone: {verdict} (baseline {alone['baseline']}, "
                    f"cache {alone['cache']})"
                )
        lines += [f"  baseline only: {t}" for t in only_base]
        if missing:
            lines.append(f"  {len(missing)} tests ran in one run only, e.g. {missing[0]}")
        ok = ok and not only_cache
    return Report("\n".join(lines), ok)


if __name__ == "__main__":
    sys.exit(main())
