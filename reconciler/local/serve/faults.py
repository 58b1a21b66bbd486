"""Fault injection for tests and benchmarks: a server that misbehaves like real ones do.

Per request, in this order: fixed ``latency_seconds``, a network round trip: half before
the handler runs (the request on its way in), half before the answer goes out (on its way
back); then one draw decides whether the
request gets a 500 (before the handler runs: nothing happened), a 429 with Retry-After
(before the handler), a slow answer (``slow_seconds`` extra), or a dropped connection
(AFTER the handler ran: the effect landed but the answer is lost, the hardest case for
a client). Draws come from one seeded RNG, so a run is reproducible for a given
request order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.local.serve.context import ApiError

FAULT_PATHS_EXEMPT = ("/openapi.json", "/docs", "/redoc", "/healthz")


@dataclass(frozen=True)
class FaultConfig:
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 1.0
    drop_rate: float = 0.0
    latency_seconds: float = 0.0
    seed: int | None = 0
    retry_after: int = 1

    def __post_init__(self) -> None:
        rates = (self.error_rate, self.throttle_rate, self.slow_rate, self.drop_rate)
        names = ("error_rate", "throttle_rate", "slow_rate", "drop_rate")
        for name, rate in zip(names, rates, strict=True):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"faults.{name}: must be between 0 and 1, got {rate}")
        if sum(rates) > 1.0:
            raise ValueError(f"faults: the rates add up to {sum(rates)}, more than 1")
        if self.latency_seconds < 0 or self.slow_seconds < 0:
            raise ValueError("faults: latency_seconds and slow_seconds must be >= 0")

    @property
    def active(self) -> bool:
        return bool(self.latency_seconds or self.error_rate or self.throttle_rate or self.slow_rate or self.drop_rate)


def _delayed(send: Send, seconds: float) -> Send:
    """``send`` that holds the answer's start for ``seconds``."""

    async def delayed_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            await asyncio.sleep(seconds)
        await send(message)

    return delayed_send


class DroppedConnection(Exception):
    """Raised after the response started, so uvicorn closes the socket mid-answer."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)


def install_log_filter() -> None:
    """Keep injected drops out of uvicorn's error log (they are not bugs)."""
    for name in ("uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietDrops) for f in logger.filters):
            logger.addFilter(_QuietDrops())


class FaultMiddleware:
    def __init__(self, app: ASGIApp, config: FaultConfig, error_response: Callable[[str, ApiError], object]):
        self.app = app
        self.config = config
        self.error_response = error_response  # (path, ApiError) -> starlette Response
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        install_log_filter()

    def _draw(self) -> str:
        c = self.config
        with self._lock:
            r = self._rng.random()
        for name, rate in (("error", c.error_rate), ("throttle", c.throttle_rate), ("slow", c.slow_rate)):
            if r < rate:
                return name
            r -= rate
        return "drop" if r < c.drop_rate else "ok"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(FAULT_PATHS_EXEMPT):
            await self.app(scope, receive, send)
            return
        c = self.config
        if c.latency_seconds:
            # All of it before the handler would wake requests that arrived together all at
            # once, to queue for serve's one event loop: clients in lockstep, a burst of ten
            # each 20 ms (bench/README.md). Split, they spread out as a real network's do.
            await asyncio.sleep(c.latency_seconds / 2)
            send = _delayed(send, c.latency_seconds / 2)
        fault = self._draw()
        path = scope.get("path", "")
        if fault == "error":
            resp = self.error_response(path, ApiError(500, "injected server error", code="fault"))
            await resp(scope, receive, send)  # type: ignore[operator]
            return
        if fault == "throttle":
            err = ApiError(429, "rate limit exceeded", code="rate_limited", headers={"Retry-After": str(c.retry_after)})
            await self.error_response(path, err)(scope, receive, send)  # type: ignore[operator]
            return
        if fault == "slow":
            await asyncio.sleep(c.slow_seconds)
        if fault != "drop":
            await self.app(scope, receive, send)
            return

        started: list[Message] = []

        async def swallow(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.append(message)

        await self.app(scope, receive, swallow)
        if started:
            # Headers go out (with the real Content-Length), the body never does.
            await send(started[0])
        raise DroppedConnection("injected dropped connection")
