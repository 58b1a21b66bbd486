"""The HTTP client every vendor provider uses: pacing, retries, one-line errors.

* Pacing: a ``RateLimiter`` shared by all worker threads keeps each endpoint and the
  total under the vendor's limits, so a parallel apply does not cause 429s. An endpoint
  is a path unless the provider says otherwise (``rate_bucket``: astica counts per host).
* Retries: 429, 5xx, timeouts and connection errors are retried with exponential
  backoff and full jitter; Retry-After is honoured and slows the bucket down.
* Non-idempotent calls (create, upload): pass ``landed``. When an answer is lost
  (timeout, dropped connection, 500/502/504) the client first asks ``landed()``
  whether the effect happened, and only re-sends if it did not.
* Errors: ``ProviderError("<vendor> <operation>: <vendor's text> (HTTP n)")``, the API
  key scrubbed from every message.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from reconciler.providers.base import CallStats, NotFound, ProviderError
from reconciler.providers.ratelimit import RateLimiter

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Answers after which the request may or may not have taken effect.
AMBIGUOUS_STATUSES = frozenset({500, 502, 504})


def error_text(response: httpx.Response) -> str:
    """The vendor's own error message from a JSON body ({error|message|detail}), else the text."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if _is_html(text):  # a web server's page, not the vendor's JSON
            if response.status_code in (404, 405):  # no such route: most likely not the vendor's API
                return "answered with an HTML page, not the vendor's JSON: check the provider's base_url"
            return f"{response.reason_phrase or 'error'} (an HTML page, not the vendor's JSON)"
        lines = text.splitlines()
        return lines[0][:200] if lines else (response.reason_phrase or "error")
    if isinstance(body, dict):
        for key in ("error", "message", "detail", "errors"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict | list) and value:
                return str(value)[:200]
    return (response.reason_phrase or "error") if not isinstance(body, str) else body[:200]


def _is_html(text: str) -> bool:
    head = text[:64].lower()
    return head.startswith(("<!doctype html", "<html")) or "<html" in head


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _plain_http_only(request: httpx.Request) -> None:
    """The request hook of a client whose base URL is plain http, and which therefore loads
    no certificates: an https URL is refused rather than sent unverified."""
    if request.url.scheme != "http":
        raise httpx.UnsupportedProtocol(f"{request.url}: not http, from a client for an http base URL")


class HttpClient:
    """Thread-safe; one per provider instance."""

    def __init__(
        self,
        base_url: str,
        *,
        vendor: str,
        headers: dict[str, str] | None = None,
        rate_limit: int | None = None,
        total_rate_limit: int | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        stats: CallStats | None = None,
        secrets: Iterable[str] = (),
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        limiter: RateLimiter | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 32,
        rate_bucket: Callable[[str], str] | None = None,
    ):
        """``rate_bucket``: the vendor's rate-limit endpoint a request path counts against
        (default: the path itself)."""
        self.vendor = vendor
        self._rate_bucket = rate_bucket
        self.stats = stats if stats is not None else CallStats()
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.limiter = limiter or RateLimiter(rate_limit, total_rate_limit)
        self._secrets = tuple(s for s in secrets if s)
        self._stats_lock = threading.Lock()
        self._rng = random.Random()
        tls = base_url.lower().startswith("https://")
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            # On a plain http base URL (a `modelsync serve`), loading the CA bundle would cost every
            # command ~30 ms of its start (measured) for nothing: no TLS, and any other scheme is
            # refused before a transport is chosen (a mount can be outranked by NO_PROXY's).
            verify=tls,
            event_hooks=None if tls else {"request": [_plain_http_only]},
            headers=headers or {},
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    # -- helpers -----------------------------------------------------------------
    def scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def error(self, operation: str, text: str, status: int | None = None, **kw: Any) -> ProviderError:
        """A ProviderError in the house format (``NotFound`` for 404)."""
        suffix = f" (HTTP {status})" if status is not None else ""
        cls = NotFound if status == 404 else ProviderError
        return cls(self.scrub(f"{self.vendor} {operation}: {text}{suffix}"), status=status, **kw)

    def _count(self, endpoint: str, *, retry: bool = False, throttled: bool = False) -> None:
        with self._stats_lock:
            s = self.stats
            s.requests += 1
            s.by_endpoint[endpoint] = s.by_endpoint.get(endpoint, 0) + 1
            if retry:
                s.retries += 1
            if throttled:
                s.throttled += 1

    def _backoff(self, attempt: int, floor: float | None = None) -> float:
        delay = self._rng.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))
        return max(delay, floor or 0.0)

    # -- the call ----------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        files: Any = None,
        data: Any = None,
        landed: Callable[[], bool] | None = None,
        ok_statuses: Iterable[int] | None = None,
        raise_for_status: bool = True,
    ) -> httpx.Response | None:
        """Send one logical request; return the final response.

        ``path``: relative to the base URL, or an absolute URL (another host of the vendor).
        ``landed``: marks the request non-idempotent. After a lost answer it is called before
        re-sending; if it returns True the request is done and ``None`` is returned.
        ``raise_for_status``: non-2xx final answers (or outside ``ok_statuses``) raise
        ProviderError/NotFound; with False the response is returned for the caller to judge.
        """
        endpoint = httpx.URL(path).path if "://" in path else path.split("?")[0]
        bucket = self._rate_bucket(endpoint) if self._rate_bucket else endpoint
        ok = frozenset(ok_statuses) if ok_statuses is not None else None
        attempt = 0
        last_problem = ""
        while True:
            retry = attempt > 0
            self.limiter.acquire(bucket)
            ambiguous = False
            wait_floor: float | None = None
            try:
                response = self._client.request(
                    method, path, json=json, params=params, headers=headers, content=content, files=files, data=data
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                self._count(endpoint, retry=retry)
                last_problem = f"cannot connect ({type(exc).__name__})"
            except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                self._count(endpoint, retry=retry)
                last_problem = f"no answer ({type(exc).__name__})"
                ambiguous = True
            except httpx.HTTPError as exc:
                self._count(endpoint, retry=retry)
                raise self.error(operation, f"request failed ({type(exc).__name__})") from None
            else:
                status = response.status_code
                throttled = status == 429
                self._count(endpoint, retry=retry, throttled=throttled)
                if status not in RETRY_STATUSES or (ok is not None and status in ok):
                    self.limiter.succeeded(bucket)
                    good = status in ok if ok is not None else status < 400
                    if good or not raise_for_status:
                        return response
                    raise self.error(operation, error_text(response), status)
                last_problem = f"{error_text(response)} (HTTP {status})"
                if throttled:
                    wait_floor = retry_after_seconds(response)
                    self.limiter.throttled(bucket, wait_floor if wait_floor is not None else 1.0)
                elif status == 503:
                    wait_floor = retry_after_seconds(response)
                ambiguous = status in AMBIGUOUS_STATUSES
                if attempt >= self.max_retries and not raise_for_status:
                    return response
            if attempt >= self.max_retries:
                raise self.error(operation, f"{last_problem}; gave up after {attempt + 1} attempts", retryable=True)
            time.sleep(self._backoff(attempt, wait_floor))
            attempt += 1
            if ambiguous and landed is not None:
                try:
                    if landed():
                        return None
                except ProviderError as exc:
                    raise self.error(operation, f"{last_problem}; could not check whether it landed: {exc}") from None

    def json(self, method: str, path: str, *, operation: str, **kw: Any) -> Any:
        """``request`` and decode the JSON body (a one-line error when it is not JSON)."""
        response = self.request(method, path, operation=operation, **kw)
        if response is None:
            return None
        try:
            return response.json()
        except ValueError:
            what = "an HTML page: check the provider's base_url" if _is_html(response.text.strip()) else "not JSON"
            raise self.error(operation, f"answer is {what}", response.status_code) from None
