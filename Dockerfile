# The demo app (example_app/ and alembic/) with sa_redis_cache and its binlog watcher, for
# docker-compose.yml.
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc pkg-config libmariadb-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir ".[demo,mysql,binlog]"
EXPOSE 8000
