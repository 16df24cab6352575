"""The seed's REST API (departments and employees) rebuilt on FastAPI, SQLAlchemy and Alembic, with
every read cached by sa_redis_cache. ``make demo`` runs a walkthrough; ``make serve`` serves it."""
