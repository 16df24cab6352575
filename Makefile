# Everything sets itself up: a virtualenv in .venv with the project installed from its own files.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-binlog serve serve-async test bench bench-binlog lint services peer

$(VENV)/.demo-installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml
	scripts/install-system-deps.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[demo,dev,bench]'
	touch $@ $(VENV)/.demo-installed $(VENV)/.binlog-installed

## demo: the scripted walkthrough on the embedded defaults (SQLite file + in-process Redis)
demo: $(VENV)/.demo-installed
	$(PY) -m example_app.walkthrough

$(VENV)/.binlog-installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[demo,binlog]'
	touch $@ $(VENV)/.demo-installed

## demo-binlog: the walkthrough on a throwaway MariaDB with its binlog on, the binlog watcher, and a
## write by the mysql command line that the apps cannot see (needs mariadbd installed)
demo-binlog: $(VENV)/.binlog-installed
	$(PY) -m example_app.walkthrough --binlog

## serve: the API for a browser at http://127.0.0.1:8000/docs
serve: $(VENV)/.demo-installed
	$(PY) -m example_app.serve

## serve-async: the same API on AsyncSession (aiosqlite and an asyncio Redis client)
serve-async: $(VENV)/.demo-installed
	DATABASE_URL=$${DATABASE_URL:-sqlite+aiosqlite:///$$(python3 -c 'import tempfile; print(tempfile.gettempdir())')/sa_redis_cache_demo_async.db} \
		$(PY) -m example_app.serve

## services: the shared MariaDB (127.0.0.1:3306) and Redis (127.0.0.1:6379), started if down
services:
	scripts/ensure-services.sh

## test: the whole suite (starts MariaDB and Redis on their usual ports if they are down)
test: $(VENV)/.dev-installed services
	$(PY) -m pytest

## bench: the benchmark at full size (a few minutes); writes docs/benchmarks.md and .png
bench: $(VENV)/.dev-installed
	$(PY) -m bench

## bench-binlog: the binlog watcher's lag and what its second bump costs (a few minutes)
bench-binlog: $(VENV)/.dev-installed
	$(PY) -m bench.binlog

## peer: SQLAlchemy's own test/orm without and with the cache on every engine, on SQLite and
## MariaDB; prints the tests that fail only with the cache (long: see docs/peer.md).
## PEER_ARGS narrows it, e.g. PEER_ARGS="--backend sqlite test/orm/test_events.py -k flags"
peer: $(VENV)/.dev-installed services
	$(PY) -m peer $(PEER_ARGS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
