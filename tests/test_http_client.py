"""The providers' HTTP client: pacing, retries, lost answers, error lines.

Pure parts run on a fake clock; the rest against real servers on loopback (a
`modelsync serve` with rate limits or injected faults) or an in-process transport
that plays a misbehaving vendor.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from reconciler.model import UploadItem, sha256_digest
from reconciler.providers.base import CallStats, NotFound, ProviderConfig, ProviderError
from reconciler.providers.http import HttpClient
from reconciler.providers.ratelimit import RateLimiter

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO / "examples" / "quickstart" / "data"
KEY = "client-test-key-123"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def max_in_window(times: list[float], window: float) -> int:
    """The most sends any server-side window (t - window, t] sees."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


# -- RateLimiter (fake clock) ---------------------------------------------------------


def test_limiter_starts_with_a_small_burst_then_paces_evenly():
    clock = FakeClock()
    lim = RateLimiter(60, None, burst=3, clock=clock, sleep=clock.sleep)
    slots = [lim.reserve("/a") - 1000.0 for _ in range(8)]
    assert slots[:3] == [0.0, 0.0, 0.0]
    assert [round(b - a, 6) for a, b in zip(slots[2:], slots[3:], strict=False)] == [1.0] * 5


@pytest.mark.parametrize("limit", [7, 90, 120])
def test_limiter_never_exceeds_the_limit_in_any_window_and_uses_it(limit):
    clock = FakeClock()
    lim = RateLimiter(limit, None, clock=clock, sleep=clock.sleep)
    slots = [lim.reserve("/upload") for _ in range(limit * 6)]
    assert max_in_window(slots, 60.0) <= limit
    in_5_minutes = sum(1 for t in slots if t < slots[0] + 300.0)
    assert in_5_minutes >= 0.95 * 5 * limit  # >= 95% of the allowed rate


def test_limiter_total_limit_is_shared_by_endpoints():
    clock = FakeClock()
    lim = RateLimiter(90, 180, clock=clock, sleep=clock.sleep)
    slots = {"/a": [], "/b": [], "/c": []}
    for i in range(900):
        ep = "/abc"[1 + i % 3]
        slots["/" + ep].append(lim.reserve("/" + ep))
    every = sorted(t for ts in slots.values() for t in ts)
    assert max_in_window(every, 60.0) <= 180
    for ts in slots.values():
        assert max_in_window(ts, 60.0) <= 90
    assert sum(1 for t in every if t < every[0] + 240.0) >= 0.95 * 4 * 180


def test_limiter_throttle_blocks_then_slows_then_recovers():
    clock = FakeClock()
    lim = RateLimiter(60, None, burst=1, clock=clock, sleep=clock.sleep)
    lim.acquire("/a")
    lim.throttled("/a", 5.0)
    t = lim.reserve("/a")
    assert t >= clock.now + 5.0
    gap = lim.reserve("/a") - t
    assert gap == pytest.approx(1.0 / 0.75)  # 25% slower after a 429
    for _ in range(200):
        lim.succeeded("/a")
    t1 = lim.reserve("/a")
    assert lim.reserve("/a") - t1 == pytest.approx(1.0)


def test_limiter_paces_threads_in_real_time():
    lim = RateLimiter(600, None, burst=1)  # 10 a second
    sends: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(3):
            lim.acquire("/x")
            with lock:
                sends.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sends.sort()
    assert len(sends) == 24
    assert sends[-1] - sends[0] >= 2.2  # 24 sends at 10/s, not all at once


# -- HttpClient against a scripted vendor (in-process transport) ---------------------


class Script:
    """A vendor that answers from a list of scripted behaviours, then 200."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.calls: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        step = self.steps.pop(0) if self.steps else 200
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return httpx.Response(step, json={"ok": True} if step == 200 else {"error": f"failure {step}"})


def client_for(script: Script, **kw) -> HttpClient:
    kw.setdefault("backoff_base", 0.01)
    return HttpClient("http://vendor.test", vendor="acme", transport=httpx.MockTransport(script), secrets=(KEY,), **kw)


def test_retries_5xx_and_connection_errors_then_succeeds():
    script = Script(500, httpx.ConnectError("refused"), 503, 200)
    stats = CallStats()
    c = client_for(script, stats=stats)
    r = c.request("GET", "/things", operation="list things")
    assert r is not None and r.status_code == 200
    assert (stats.requests, stats.retries, stats.throttled) == (4, 3, 0)
    assert stats.by_endpoint == {"/things": 4}


def test_429_retry_after_is_honoured():
    script = Script(httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "slow down"}), 200)
    stats = CallStats()
    c = client_for(script, stats=stats)
    t0 = time.monotonic()
    assert c.request("GET", "/x", operation="x").status_code == 200
    assert time.monotonic() - t0 >= 0.95
    assert stats.throttled == 1 and stats.retries == 1


def test_errors_are_one_line_with_vendor_text_and_no_key():
    script = Script(httpx.Response(400, json={"message": f"key {KEY} lacks permission"}))
    c = client_for(script)
    with pytest.raises(ProviderError) as exc:
        c.request("POST", "/jobs", json={"k": KEY}, operation="start job")
    msg = str(exc.value)
    assert msg == "acme start job: key *** lacks permission (HTTP 400)"
    assert "\n" not in msg and KEY not in msg
    with pytest.raises(NotFound):
        client_for(Script(404)).request("GET", "/jobs/9", operation="job status")
    page = httpx.Response(404, text="<!DOCTYPE HTML>\n<html><title>Error response</title></html>")
    with pytest.raises(NotFound) as exc:  # base_url pointing at some web server, not the vendor
        client_for(Script(page)).request("GET", "/models", operation="list models")
    assert str(exc.value) == (
        "acme list models: answered with an HTML page, not the vendor's JSON: check the provider's base_url (HTTP 404)"
    )


def test_gives_up_after_max_retries():
    c = client_for(Script(*[502] * 10), max_retries=2)
    with pytest.raises(ProviderError) as exc:
        c.request("GET", "/x", operation="ping")
    assert str(exc.value) == "acme ping: failure 502 (HTTP 502); gave up after 3 attempts"
    assert exc.value.retryable


def test_lost_answer_is_checked_before_resending():
    script = Script(httpx.ReadTimeout("lost"), 200)
    c = client_for(script)
    checks = []
    assert c.request("POST", "/upload", operation="upload", landed=lambda: checks.append(1) or True) is None
    assert len(script.calls) == 1 and checks == [1]  # landed: not sent again

    script = Script(httpx.RemoteProtocolError("dropped"), 500, 200)
    c = client_for(script)
    r = c.request("POST", "/upload", operation="upload", landed=lambda: False)
    assert r is not None and r.status_code == 200 and len(script.calls) == 3


# -- against real servers ----------------------------------------------------------------


def test_pacing_under_a_low_limit_causes_no_429(serve_thread):
    handle = serve_thread(keys=[KEY], rate_limit=120, total_rate_limit=None)
    stats = CallStats()
    c = HttpClient(handle.base_url, vendor="astica", rate_limit=120, stats=stats)
    stop = time.monotonic() + 5.0
    done = []

    def worker():
        while time.monotonic() < stop:
            r = c.request("POST", "/model/list", json={"tkn": KEY}, operation="list", raise_for_status=False)
            done.append(r.status_code)

    with ThreadPoolExecutor(6) as pool:
        for _ in range(6):
            pool.submit(worker)
    assert stats.throttled == 0 and set(done) == {200}
    assert len(done) >= 0.95 * (5.0 * 2)  # 120 a minute = 2 a second


@pytest.mark.slow
def test_pacing_across_window_boundaries_reaches_the_rate_without_429(serve_thread):
    """A short window (5 s, 20 requests) lets the test cross two windows quickly."""
    handle = serve_thread(keys=[KEY], rate_limit=20, total_rate_limit=None, rate_window=5.0)
    stats = CallStats()
    c = HttpClient(handle.base_url, vendor="astica", stats=stats, limiter=RateLimiter(20, None, window=5.0))
    t0 = time.monotonic()
    stop = t0 + 11.0
    sends: list[float] = []

    def worker():
        while time.monotonic() < stop:
            c.request("POST", "/model/list", json={"tkn": KEY}, operation="list")
            sends.append(time.monotonic())

    with ThreadPoolExecutor(10) as pool:
        for _ in range(10):
            pool.submit(worker)
    assert stats.throttled == 0
    in_10s = sum(1 for t in sends if t - t0 <= 10.0)
    assert in_10s >= 0.95 * 40  # two full windows' worth


def test_astica_training_calls_share_one_budget_as_the_vendor_counts_them(serve_thread):
    """astica's limit is per host: list, view and upload (all train.astica.ai) together stay
    under it. Paced per path, each path would get its own budget and the server would refuse."""
    from reconciler.providers.astica import rate_bucket

    handle = serve_thread(keys=[KEY], rate_limit=4, total_rate_limit=None, rate_window=2.0)
    stats = CallStats()
    c = HttpClient(handle.base_url, vendor="astica", stats=stats, limiter=RateLimiter(4, None, window=2.0),
                   rate_bucket=rate_bucket, max_retries=0)
    stop = time.monotonic() + 4.5
    paths = ["/model/list", "/model/view", "/model/list"]
    codes: list[int] = []

    def worker(path: str) -> None:
        while time.monotonic() < stop:
            r = c.request("POST", path, json={"tkn": KEY}, operation="list", raise_for_status=False)
            codes.append(r.status_code)

    with ThreadPoolExecutor(len(paths)) as pool:
        list(pool.map(worker, paths))
    assert stats.throttled == 0 and set(codes) == {200}
    assert stats.by_endpoint["/model/view"] >= 1 and len(codes) >= 8  # both paths, at the host's rate
    assert rate_bucket("/detect") != rate_bucket("/model/upload") == rate_bucket("/model/model_train")


def test_uploads_converge_under_faults_without_duplicates(serve_process):
    from reconciler.providers.astica import AsticaProvider

    handle = serve_process(
        keys=[KEY],
        rate_limit=None,
        total_rate_limit=None,
        faults={"error_rate": 0.15, "throttle_rate": 0.1, "drop_rate": 0.15, "seed": 7},
    )
    config = ProviderConfig(name="t", type="astica", api_key=KEY, base_url=handle.base_url, rate_limit=6000,
                            options={"total_rate_limit": 12000, "backoff_base": 0.02, "max_retries": 12})
    provider = AsticaProvider(config)
    try:
        mid = provider.create_model("faulty", "vision", "classification", ())
        files = sorted(SHAPES.glob("*/*.png"))[:30]
        items = [
            UploadItem(uid=f"u-{p.stem}", class_name=p.parent.name, digest=sha256_digest(p.read_bytes()),
                       size=p.stat().st_size, filename=p.name, read=p.read_bytes)
            for p in files
        ]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda it: provider.upload_sample(mid, it), items))
        model = provider.view_model(mid)
        uids = [s.uid for s in model.samples]
        assert sorted(uids) == sorted(it.uid for it in items)  # all landed, none twice
        assert {s.uid: s.digest for s in model.samples} == {it.uid: it.digest for it in items}
        assert provider.stats.retries > 0 and provider.stats.throttled > 0
        assert [m.title for m in provider.list_models()] == ["faulty"]
    finally:
        provider.close()


def test_a_client_for_an_http_base_url_never_sends_https_unverified(monkeypatch):
    """Such a client loads no certificates (verify off, ~30 ms of every start saved): an https URL
    must be refused before any connection, NO_PROXY's mounts included (they outrank a mount)."""
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    client = HttpClient("http://127.0.0.1:9", vendor="astica", max_retries=3)
    for url in ("https://localhost:1/model/list", "https://127.0.0.1:1/x", "https://example.invalid/x"):
        with pytest.raises(ProviderError, match=r"astica probe: request failed \(UnsupportedProtocol\)"):
            client.request("GET", url, operation="probe")
    assert client.stats.retries == 0
    client.close()
