"""Client-side pacing: stay under a vendor's "N requests a minute" without wasting it.

Two rules per bucket, both enforced by reserving a send time under one lock shared by
every worker thread:

* smooth pacing (GCRA, a token bucket's exact form): one request every 60/N s, with a
  small initial burst, never a whole minute's worth at once;
* a hard cap: never more than N sends in any window of 60 s + ``margin`` (a sliding log),
  which is what a strict server counts. The margin (1% of the window) absorbs jitter.

Long-run throughput is N per (60 + margin) s: 99% of the allowed rate with the default
margin. A 429 blocks the bucket for Retry-After and slows it down (adaptive); successes
bring the rate back.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

TOTAL = ""  # bucket name of the all-endpoints limit


class _Bucket:
    def __init__(self, limit: int, window: float, margin: float, burst: int):
        self.limit = limit
        self.window = window + margin
        self.interval = window / limit
        self.tau = (max(1, min(burst, limit)) - 1) * self.interval
        self.tat: float | None = None  # GCRA theoretical arrival time
        self.log: deque[float] = deque(maxlen=limit)
        self.blocked_until = 0.0
        self.factor = 1.0  # < 1 after throttling: pace slower

    def earliest(self, now: float) -> float:
        t = max(now, self.blocked_until)
        if self.tat is not None:
            t = max(t, self.tat - self.tau)
        if self.log:
            t = max(t, self.log[-1])  # keep the log ordered
            if len(self.log) == self.limit:
                t = max(t, self.log[0] + self.window)
        return t

    def commit(self, t: float) -> None:
        step = self.interval / self.factor
        self.tat = max(self.tat if self.tat is not None else t, t) + step
        self.log.append(t)


class RateLimiter:
    """Per-endpoint and total limits (requests a minute; None: unlimited), shared by threads."""

    def __init__(
        self,
        per_endpoint: int | None,
        total: int | None = None,
        *,
        window: float = 60.0,
        margin: float | None = None,
        burst: int = 3,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        for name, value in (("rate_limit", per_endpoint), ("total_rate_limit", total)):
            if value is not None and value <= 0:
                raise ValueError(f"{name}: must be a positive number of requests a minute, got {value}")
        self.per_endpoint = per_endpoint
        self.total = total
        self.window = window
        self.margin = window / 100 if margin is None else margin
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._successes: dict[str, int] = {}

    def _bucket(self, name: str) -> _Bucket | None:
        limit = self.total if name == TOTAL else self.per_endpoint
        if limit is None:
            return None
        b = self._buckets.get(name)
        if b is None:
            b = self._buckets[name] = _Bucket(limit, self.window, self.margin, self.burst)
        return b

    def reserve(self, endpoint: str) -> float:
        """Reserve the next send slot for ``endpoint``; return the monotonic time to send at."""
        with self._lock:
            now = self._clock()
            buckets = [b for b in (self._bucket(endpoint), self._bucket(TOTAL)) if b is not None]
            t = max((b.earliest(now) for b in buckets), default=now)
            for b in buckets:
                b.commit(t)
            return t

    def acquire(self, endpoint: str) -> float:
        """Block until ``endpoint`` may be called; return the seconds waited."""
        t = self.reserve(endpoint)
        wait = t - self._clock()
        if wait > 0:
            self._sleep(wait)
        return max(0.0, wait)

    def throttled(self, endpoint: str, retry_after: float | None) -> None:
        """A 429 arrived: hold the endpoint for Retry-After and pace it 25% slower."""
        with self._lock:
            now = self._clock()
            b = self._bucket(endpoint) or self._bucket(TOTAL)
            if b is None:
                return
            b.blocked_until = max(b.blocked_until, now + (retry_after if retry_after is not None else 1.0))
            b.factor = max(0.25, b.factor * 0.75)
            self._successes[endpoint] = 0

    def succeeded(self, endpoint: str) -> None:
        """Recover the nominal rate gradually after throttling."""
        with self._lock:
            b = self._buckets.get(endpoint)
            if b is None or b.factor >= 1.0:
                return
            n = self._successes.get(endpoint, 0) + 1
            self._successes[endpoint] = n
            if n >= 10:
                b.factor = min(1.0, b.factor / 0.9)
                self._successes[endpoint] = 0
