"""The circuit breaker every store shares: after a Redis error, keep Redis off the request path.

One failed call costs at most the client's timeout; the calls after it cost nothing until the
breaker lets one through again, ``retry_after`` seconds later.
"""

from __future__ import annotations

import time


class CircuitBreaker:
    def __init__(self, retry_after: float) -> None:
        self._retry_after = retry_after
        self._open_until = 0.0

    def allows(self) -> bool:
        return time.monotonic() >= self._open_until

    def trip(self) -> None:
        self._open_until = time.monotonic() + self._retry_after
