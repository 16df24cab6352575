"""Migrations for the demo schema, run through an engine the query cache is installed on, so that
schema changes invalidate the tables they touch.

A caller may pass ``config.attributes["connection"]`` (a connection of such an engine); otherwise
the engine is built here from ``-x url=...`` or ``DATABASE_URL`` and, when ``REDIS_URL`` is set,
gets the demo's cache installed before the migration runs.
"""

from __future__ import annotations

import os

from alembic import context

from example_app.models import Base
from example_app.settings import database_url, make_engine
from sa_redis_cache import QueryCache

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(context.get_x_argument(as_dictionary=True).get("url") or database_url())
    if os.environ.get("REDIS_URL"):
        namespace = os.environ.get("CACHE_NAMESPACE", "demo")
        QueryCache.from_url(os.environ["REDIS_URL"], namespace=namespace).install(engine)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported by the demo")
run_migrations_online()
