"""The ``sa-redis-cache`` command line (``pip install 'sa_redis_cache[cli]'``).

A ``click`` group; each subcommand takes the Redis and namespace options from
:func:`redis_options` (or the environment), so that the commands of one deployment share them.

    sa-redis-cache watch-binlog --database-url mysql://watcher:pw@db:3306 \\
        --redis-url redis://redis:6379/0 --namespace shop
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

try:
    import click
except ModuleNotFoundError as exc:  # the optional extra is not installed
    raise SystemExit(
        "sa-redis-cache: the command line needs click: pip install 'sa_redis_cache[cli]'"
    ) from exc

F = TypeVar("F", bound=Callable[..., Any])

REDIS_URL_ENV = ("SA_REDIS_CACHE_REDIS_URL", "REDIS_URL")
NAMESPACE_ENV = ("SA_REDIS_CACHE_NAMESPACE", "CACHE_NAMESPACE")
DATABASE_URL_ENV = ("SA_REDIS_CACHE_DATABASE_URL", "DATABASE_URL")


def redis_options(command: F) -> F:
    """``--redis-url`` and ``--namespace``, for every subcommand that talks to the cache."""
    command = click.option(
        "--namespace",
        envvar=NAMESPACE_ENV,
        default="sa_redis_cache",
        show_default=True,
        show_envvar=True,
        help="The apps' QueryCache namespace.",
    )(command)
    command = click.option(
        "--redis-url",
        envvar=REDIS_URL_ENV,
        default="redis://127.0.0.1:6379/0",
        show_default=True,
        show_envvar=True,
        help="The Redis the apps' cache uses.",
    )(command)
    return command


@click.group(name="sa-redis-cache", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log every bump.")
def cli(verbose: bool) -> None:
    """Operate the Redis query cache of SQLAlchemy applications."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if verbose:
        logging.getLogger("sa_redis_cache").setLevel(logging.DEBUG)


@cli.command("watch-binlog")
@redis_options
@click.option(
    "--database-url",
    envvar=DATABASE_URL_ENV,
    required=True,
    show_envvar=True,
    help="The MySQL/MariaDB server to follow (a SQLAlchemy URL; the user needs REPLICATION "
    "SLAVE, REPLICATION CLIENT and SELECT).",
)
@click.option(
    "--database-id",
    envvar="SA_REDIS_CACHE_DATABASE_ID",
    help="The server identity the apps use: what they give install(database_id=...), if they do.",
)
@click.option(
    "--server-id",
    type=click.IntRange(1, 2**32 - 1),
    help="Replica server id to announce (default: one derived from namespace and server).",
)
@click.option("--ttl", type=click.IntRange(min=1), default=86400, show_default=True,
              help="Seconds version keys live: the apps' ttl.")  # fmt: skip
@click.option("--heartbeat-ttl", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds require_watcher readers trust a silent watcher.")  # fmt: skip
@click.option("--lease-ttl", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Seconds a dead watcher keeps a standby waiting.")  # fmt: skip
def watch_binlog(
    redis_url: str,
    namespace: str,
    database_url: str,
    database_id: str | None,
    server_id: int | None,
    ttl: int,
    heartbeat_ttl: float,
    lease_ttl: float,
) -> None:
    """Bump the tables of every transaction committed on the server, whoever wrote it.

    Runs until SIGTERM or Ctrl-C. A second watcher on the same namespace and server waits and
    takes over when the first one dies.
    """
    try:
        from .binlog import BinlogSetupError, BinlogWatcher
    except ModuleNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    from sqlalchemy.exc import ArgumentError

    from .errors import CacheConfigurationError

    stop = threading.Event()
    try:
        watcher = BinlogWatcher(
            database_url,
            redis_url,
            namespace=namespace,
            database_id=database_id,
            server_id=server_id,
            ttl=ttl,
            heartbeat_interval=min(0.5, heartbeat_ttl / 3),
            heartbeat_ttl=heartbeat_ttl,
            lease_ttl=max(lease_ttl, heartbeat_ttl),
        )
    except (CacheConfigurationError, ValueError, ArgumentError) as exc:
        raise click.BadParameter(str(exc)) from exc

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        watcher.run(stop)
    except BinlogSetupError as exc:
        raise click.ClickException(str(exc)) from exc


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
