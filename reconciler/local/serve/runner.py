"""`modelsync serve`: the app under uvicorn, one process, one LocalService."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from reconciler.local.serve.auth import KeyInfo, normalize_keys
from reconciler.local.serve.faults import FaultConfig


def run(
    host: str = "127.0.0.1",
    port: int = 8700,
    data_dir: str | Path = ".modelsync/local",
    keys: Mapping[str, KeyInfo] | Iterable[str] | None = None,
    rate_limit: int | None = 90,
    total_rate_limit: int | None = 180,
    allow_private_urls: bool = False,
    log_level: str = "info",
    faults: FaultConfig | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until interrupted. ``sock``: an already bound socket (tests use it to avoid port races)."""
    import uvicorn

    from reconciler.local.serve.app import create_app
    from reconciler.local.service import LocalService

    key_map = normalize_keys(keys)
    if not key_map:
        print(
            "modelsync serve: WARNING: no API keys configured (--key / --keys-file): "
            "accepting any non-empty key, each key seeing its own data (dev mode)",
            file=sys.stderr,
        )
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    service = LocalService(Path(data_dir))
    try:
        app = create_app(
            service,
            keys=key_map,
            rate_limit=rate_limit,
            total_rate_limit=total_rate_limit,
            allow_private_urls=allow_private_urls,
            faults=faults,
        )
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), access_log=False)
        server = uvicorn.Server(config)
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        service.close()
