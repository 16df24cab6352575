"""SQLAlchemy's own test suite as a peer review of the cache (``make peer``).

Not part of the installed library nor of ``tests/``: ``python -m peer`` downloads the source
distribution of the installed SQLAlchemy (it ships ``test/``), runs its ``test/orm`` twice per
backend, once plain and once with :mod:`peer.plugin` installing the cache on every engine, and
prints the tests that fail only with the cache. A difference between the two runs is either a
bug of the cache or a limit the README must state.
"""
