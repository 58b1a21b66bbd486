"""Server-side request limits: at most N requests in any 60 s window, per key and endpoint
and per key in all (astica's "90 a minute per endpoint, 180 in all").

A sliding log is exact (a token bucket would let a full bucket plus the refill through
in the first minute), so a client that passes here passes a strict vendor too.
Rejected requests are not counted: a throttled client is not punished twice.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimiter:
    def __init__(
        self,
        per_endpoint: int | None,
        total: int | None,
        *,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        for name, value in (("rate_limit", per_endpoint), ("total_rate_limit", total)):
            if value is not None and value <= 0:
                raise ValueError(f"{name}: must be a positive number of requests a minute, got {value}")
        self.per_endpoint = per_endpoint
        self.total = total
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._logs: dict[tuple[str, str], deque[float]] = {}

    def _wait(self, log: deque[float], limit: int, now: float) -> float:
        """Seconds until ``log`` admits one more request (0 when it does now)."""
        cutoff = now - self.window
        while log and log[0] <= cutoff:
            log.popleft()
        if len(log) < limit:
            return 0.0
        return log[0] + self.window - now

    def check(self, key: str, endpoint: str) -> int | None:
        """Admit and count one request, or return the whole seconds to wait (Retry-After)."""
        now = self._clock()
        with self._lock:
            waits = []
            logs = []
            if self.per_endpoint is not None:
                log = self._logs.setdefault((key, endpoint), deque())
                waits.append(self._wait(log, self.per_endpoint, now))
                logs.append(log)
            if self.total is not None:
                log = self._logs.setdefault((key, ""), deque())
                waits.append(self._wait(log, self.total, now))
                logs.append(log)
            wait = max(waits, default=0.0)
            if wait > 0:
                return max(1, math.ceil(wait))
            for log in logs:
                log.append(now)
            return None
