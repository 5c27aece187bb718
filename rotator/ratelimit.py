"""Small thread-safe throttles shared by every worker thread that talks to one host.

`TokenBucket` caps the request *rate*; `ConcurrencyLimit` caps requests *in flight*. Both are
deliberately tiny: the Funnelback client takes one of each per host.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self


class TokenBucket:
    """A token bucket: on average `rate` acquisitions per second, bursts up to `burst`.

    `acquire()` blocks until a token is available. Waiters do not spin: each computes how long until
    the next token and sleeps that long outside the lock, then competes again.
    """

    def __init__(self, rate: float, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        # A burst of at least one token, otherwise a rate below 1/s could never be satisfied.
        self.burst = max(1.0, float(burst) if burst is not None else self.rate)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._updated = clock()

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated = now

    def try_acquire(self) -> float:
        """Take a token if one is available and return 0.0, else return the seconds to wait."""
        with self._lock:
            self._refill(self._clock())
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate

    def acquire(self) -> None:
        while True:
            wait = self.try_acquire()
            if wait <= 0.0:
                return
            self._sleep(wait)


class ConcurrencyLimit:
    """A bounded semaphore used as a context manager, with a gauge of current use (for tests)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.in_use = 0
        self.max_in_use = 0

    def __enter__(self) -> Self:
        self._sem.acquire()
        with self._lock:
            self.in_use += 1
            self.max_in_use = max(self.max_in_use, self.in_use)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._lock:
            self.in_use -= 1
        self._sem.release()
