"""Real `modelsync serve` servers on 127.0.0.1 for tests: in a thread or a subprocess.

Both bind a free port, keep their data in the test's tmp_path, wait until the server
answers, and stop it at teardown. Use the pytest fixtures ``serve_thread`` and
``serve_process`` (factories), or the context managers directly.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ServeHandle:
    base_url: str
    data_dir: Path
    port: int
    service: Any = None  # the LocalService (thread variant only)
    app: Any = None  # the FastAPI app (thread variant only)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def free_port() -> int:
    with contextlib.closing(_bound_socket()) as s:
        return s.getsockname()[1]


def wait_ready(base_url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"serve exited with code {proc.returncode} before answering")
        try:
            if httpx.get(base_url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"serve at {base_url} did not answer within {timeout} s")


@contextlib.contextmanager
def run_serve_thread(data_dir: Path, **app_kwargs: Any) -> Iterator[ServeHandle]:
    """create_app(...) under uvicorn in a thread of this process; ``app_kwargs`` go to create_app."""
    import uvicorn

    from reconciler.local.serve import create_app
    from reconciler.local.service import LocalService

    service = LocalService(data_dir)
    app = create_app(service, **app_kwargs)
    sock = _bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url)
        yield ServeHandle(base_url=base_url, data_dir=data_dir, port=port, service=service, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        service.close()


@contextlib.contextmanager
def run_serve_process(
    data_dir: Path,
    *,
    keys: dict[str, dict] | list[str] | None = None,
    rate_limit: int | None = 90,
    total_rate_limit: int | None = 180,
    allow_private_urls: bool = False,
    faults: dict[str, float] | None = None,
    extra_args: list[str] | None = None,
) -> Iterator[ServeHandle]:
    """``python -m reconciler.local.serve`` in a subprocess.

    ``keys``: a list of bare keys, or key -> {owner, permissions, team_id, projects}
    (written to a keys file, so keys never show on a command line).
    ``faults``: {"error_rate": 0.1, "drop_rate": ..., "latency": ..., "seed": ...} -> --fault-* flags.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [sys.executable, "-m", "reconciler.local.serve", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--data", str(data_dir / "service"), "--log-level", "warning"]
    if keys:
        entries = [{"key": k} for k in keys] if isinstance(keys, list) else [{"key": k, **v} for k, v in keys.items()]
        keys_file = data_dir / "keys.json"
        keys_file.write_text(json.dumps({"keys": entries}))
        args += ["--keys-file", str(keys_file)]
    args += ["--rate-limit", str(rate_limit or 0), "--total-rate-limit", str(total_rate_limit or 0)]
    if allow_private_urls:
        args.append("--allow-private-urls")
    for name, value in (faults or {}).items():
        args += [f"--fault-{name.replace('_', '-')}", str(value)]
    args += extra_args or []
    log_path = data_dir / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(data_dir), env=env)
    base_url = f"http://127.0.0.1:{port}"
    handle = ServeHandle(base_url=base_url, data_dir=data_dir, port=port, process=proc, log_path=log_path)
    try:
        try:
            wait_ready(base_url, proc=proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{handle.log()}") from None
        yield handle
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def static_file_server(root: Path) -> Iterator[str]:
    """A tiny http.server on loopback serving ``root``; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    class QuietServer(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            """A client that hangs up mid-body (e.g. at a size cap) is expected: no report on
            stderr, which in-process CLI tests capture as the command's own output."""

    httpd = QuietServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- pytest fixtures (imported by conftest.py) -----------------------------------------


@pytest.fixture
def serve_thread(tmp_path: Path):
    """Factory: ``handle = serve_thread(keys=..., rate_limit=..., faults=FaultConfig(...))``."""
    with contextlib.ExitStack() as stack:
        counter = iter(range(1000))

        def start(**kwargs: Any) -> ServeHandle:
            kwargs.setdefault("allow_private_urls", False)
            data_dir = tmp_path / f"serve-thread-{next(counter)}"
            return stack.enter_context(run_serve_thread(data_dir, **kwargs))

        yield start


@pytest.fixture
def serve_process(tmp_path: Path):
    """Factory: ``handle = serve_process(keys=[...], rate_limit=..., faults={...})``."""
    with contextlib.ExitStack() as stack:
        counter = iter(range(1000))

        def start(**kwargs: Any) -> ServeHandle:
            data_dir = tmp_path / f"serve-proc-{next(counter)}"
            return stack.enter_context(run_serve_process(data_dir, **kwargs))

        yield start


@pytest.fixture
def static_files(tmp_path: Path):
    """Factory: ``base_url = static_files(directory)``: a loopback file server."""
    with contextlib.ExitStack() as stack:

        def start(root: Path) -> str:
            return stack.enter_context(static_file_server(root))

        yield start
