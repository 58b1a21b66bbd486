"""`modelsync serve` (the real app over a real LocalService) plus a request log, for benchmarks.

    python bench/counting_serve.py --port P --data DIR --key KEY [--owner NAME] [--rate-limit N]
                                   [--total-rate-limit N] [--latency SECONDS]

Every request is recorded from the server's side as (monotonic time, method, path,
status) by an outermost ASGI middleware, so a benchmark can count requests by endpoint,
the 429s the server sent, and the rate achieved. GET /bench/log returns the log (and
is not itself logged); POST /bench/reset clears it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class RequestLog:
    """ASGI middleware: records each request's status, answers /bench/log and /bench/reset."""

    def __init__(self, app):
        self.app = app
        self.entries: list[tuple[float, str, str, int]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in ("/bench/log", "/bench/reset"):
            with self.lock:
                body = json.dumps(self.entries if path == "/bench/log" else []).encode()
                if path == "/bench/reset":
                    self.entries = []
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        started = time.monotonic()
        status = [0]

        async def watch(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            with self.lock:
                self.entries.append((started, scope.get("method", ""), path, status[0]))


def _limit(text: str) -> int | None:
    return None if text in ("0", "none") else int(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--rate-limit", type=_limit, default=None)
    p.add_argument("--total-rate-limit", type=_limit, default=None)
    p.add_argument("--owner", default=None, help="the key's owner (default: derived from the key)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    args = p.parse_args()

    import uvicorn

    from reconciler.local.serve import create_app
    from reconciler.local.serve.auth import KeyInfo
    from reconciler.local.serve.faults import FaultConfig
    from reconciler.local.service import LocalService

    service = LocalService(Path(args.data))
    faults = FaultConfig(latency_seconds=args.latency) if args.latency else None
    app = create_app(
        service,
        keys={args.key: KeyInfo(owner=args.owner)} if args.owner else [args.key],
        rate_limit=args.rate_limit,
        total_rate_limit=args.total_rate_limit,
        allow_private_urls=False,
        faults=faults,
    )
    try:
        uvicorn.run(RequestLog(app), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
