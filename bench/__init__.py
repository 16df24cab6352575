"""Benchmarks for sa_redis_cache on the seed's schema: ``python -m bench`` (``--help``)."""
