"""``python -m example_app.serve``: migrate, seed, and serve the API for a browser (``/docs``)."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from example_app.app import create_app
from example_app.migrations import seed, upgrade
from example_app.settings import database_url, make_engine, redis_client
from sa_redis_cache import QueryCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app()
    migrations = app.state.engine
    if isinstance(migrations, AsyncEngine):  # migrate through a sync twin with the same cache
        migrations = make_engine(database_url())
        QueryCache(redis_client(None), namespace=app.state.cache.namespace).install(migrations)
    upgrade(migrations)
    seed(migrations)
    print(f"serving on http://{args.host}:{args.port}/docs")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
