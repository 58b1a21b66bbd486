"""Vendor client options declared in the spec (rate_limit, total_rate_limit, timeout, max_retries,
backoff_base, send_urls) reach each provider through the workspace, and the provider paces,
retries, times out and uploads as they say."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.model import UploadItem
from reconciler.providers import PROVIDER_CLASSES, provider_class
from reconciler.providers import base as caps
from reconciler.providers.base import ProviderError
from reconciler.workspace import PROVIDER_OPTIONS, Workspace
from specs import ProviderSpec
from specs.models import INFERENCE_ONLY_PROVIDERS

KEY = "options-key-1234"


def workspace(tmp_path: Path, monkeypatch, provider: str) -> Workspace:
    """A project whose only provider is ``prod: {provider}`` (a YAML flow mapping body)."""
    monkeypatch.setenv("OPTIONS_TEST_KEY", KEY)
    (tmp_path / "modelsync.yaml").write_text(
        f"version: 1\nproviders:\n  prod: {{{provider}, api_key: '${{env:OPTIONS_TEST_KEY}}'}}\nmodels: {{}}\n"
    )
    return Workspace(tmp_path)


def spacing(limiter, endpoints: list[str]) -> float:
    """Seconds between consecutive send slots the limiter grants, once its small burst is spent.
    ``reserve`` only schedules (it does not sleep), so this reads the pace exactly."""
    times = [limiter.reserve(e) for e in endpoints]
    tail = times[5:]
    return (tail[-1] - tail[0]) / (len(tail) - 1)


def test_a_raised_rate_limit_raises_astica_total_in_proportion(tmp_path, monkeypatch):
    ws = workspace(tmp_path, monkeypatch, "type: astica, base_url: 'http://127.0.0.1:9', rate_limit: 600")
    try:
        limiter = ws.provider("prod").http.limiter
        # 40 different endpoints: only the total binds. astica documents 90 and 180: 600 -> 1200 a minute.
        assert spacing(limiter, [f"/e{i}" for i in range(40)]) == pytest.approx(60 / 1200, rel=0.02)
    finally:
        ws.close()
    ws = workspace(tmp_path, monkeypatch, "type: astica, base_url: 'http://127.0.0.1:9', rate_limit: 600")
    try:
        limiter = ws.provider("prod").http.limiter
        assert spacing(limiter, ["/model/upload"] * 40) == pytest.approx(60 / 600, rel=0.02)
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("options", "total_per_minute"),
    [
        ("rate_limit: 600, total_rate_limit: 300", 300),  # an explicit total wins
        ("rate_limit: 45", 90),  # lowered in proportion too
        ("timeout: 5", 180),  # no rate_limit: the documented 90 and 180
    ],
)
def test_total_rate_limit_explicit_or_documented(tmp_path, monkeypatch, options, total_per_minute):
    ws = workspace(tmp_path, monkeypatch, f"type: astica, base_url: 'http://127.0.0.1:9', {options}")
    try:
        limiter = ws.provider("prod").http.limiter
        assert spacing(limiter, [f"/e{i}" for i in range(30)]) == pytest.approx(60 / total_per_minute, rel=0.02)
    finally:
        ws.close()


def test_vendors_without_a_documented_total_stay_unlimited_in_all(tmp_path, monkeypatch):
    ws = workspace(tmp_path, monkeypatch, "type: autogon, base_url: 'http://127.0.0.1:9', rate_limit: 600")
    try:
        limiter = ws.provider("prod").http.limiter
        assert spacing(limiter, [f"/e{i}" for i in range(30)]) < 0.001  # no wait at all
        assert spacing(limiter, ["/one"] * 30) == pytest.approx(60 / 600, rel=0.02)
    finally:
        ws.close()


def test_every_provider_field_is_wired_to_the_provider():
    """A field added to the spec's providers must reach ProviderConfig, as a field or an option."""
    own_fields = {"type", "api_key", "base_url", "rate_limit", "path"}
    assert set(ProviderSpec.model_fields) == own_fields | set(PROVIDER_OPTIONS)


def test_the_spec_knows_which_providers_only_run_inference():
    """The spec lets models on these declare no classes, and refuses classes and training there:
    it must agree with what each provider says it can do."""
    feeding = {caps.CAP_UPLOAD_BYTES, caps.CAP_UPLOAD_URLS, caps.CAP_TRAIN, caps.CAP_MODELS}
    for kind in PROVIDER_CLASSES:
        capabilities = provider_class(kind).capabilities
        assert (kind in INFERENCE_ONLY_PROVIDERS) == (not capabilities & feeding), kind
        if kind in INFERENCE_ONLY_PROVIDERS:
            assert caps.CAP_INFER in capabilities, kind


# -- retries, backoff and timeouts against a stub vendor ------------------------------------


class Stub:
    """A loopback HTTP server answering every request per ``mode``: "error" (500), "slow" (after
    2 s), or "ok" (astica's {"status": "OK", "sample_id": 7}); it records each JSON body."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.bodies: list[Any] = []
        self.base_url = ""


@contextlib.contextmanager
def stub_server() -> Iterator[Stub]:
    stub = Stub()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            stub.bodies.append(json.loads(raw) if raw else None)
            if stub.mode == "slow":
                time.sleep(2.0)
            status, body = (500, b'{"error": "boom"}') if stub.mode == "error" else (200, b"")
            if stub.mode == "ok":
                body = b'{"status": "OK", "sample_id": 7}'
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up waiting
                pass

        do_GET = do_POST = do_DELETE = _answer  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    stub.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield stub
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("kind", ["astica", "autogon", "annolab", "scenario"])
def test_max_retries_backoff_and_timeout_from_the_spec(tmp_path, monkeypatch, kind):
    with stub_server() as stub:
        options = f"type: {kind}, base_url: '{stub.base_url}', max_retries: 2, backoff_base: 0.01"
        ws = workspace(tmp_path, monkeypatch, options)
        stub.mode = "error"
        try:
            start = time.monotonic()
            with pytest.raises(ProviderError, match=r"\(HTTP 500\)|gave up after 3 attempts"):
                ws.provider("prod").list_models()
            assert len(stub.bodies) == 3 and time.monotonic() - start < 2.0  # 0.01 s backoff, not 0.5
        finally:
            ws.close()

        stub.mode, stub.bodies = "slow", []
        options = f"type: {kind}, base_url: '{stub.base_url}', timeout: 0.3, max_retries: 0"
        ws = workspace(tmp_path, monkeypatch, options)
        try:
            start = time.monotonic()
            with pytest.raises(ProviderError, match="no answer"):
                ws.provider("prod").list_models()
            assert time.monotonic() - start < 1.5 and len(stub.bodies) == 1
        finally:
            ws.close()


@pytest.mark.parametrize(("setting", "sends_url"), [("", True), (", send_urls: false", False)])
def test_astica_send_urls(tmp_path, monkeypatch, setting, sends_url):
    with stub_server() as stub:
        ws = workspace(tmp_path, monkeypatch, f"type: astica, base_url: '{stub.base_url}'{setting}")
        try:
            url = "https://example.org/circle.png"
            item = UploadItem("u1", "circle", "sha256:x", 9, "circle.png", lambda: b"png-bytes", url=url)
            assert ws.provider("prod").upload_sample("1", item) == "7"
        finally:
            ws.close()
    (body,) = stub.bodies
    assert body["input"] == (url if sends_url else base64.b64encode(b"png-bytes").decode())
