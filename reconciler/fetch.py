"""Fetching URL sources: each URL is downloaded, hashed and kept by content.

Re-planning sends a conditional GET (ETag / Last-Modified) so an unchanged URL costs
a 304, and the bytes stay in a content-addressed cache for the upload.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from reconciler.atomic import write_atomic
from reconciler.local.magic import sniff
from reconciler.model import sha256_digest

MAX_URL_BYTES = 50 * 2**20
TIMEOUT_SECONDS = 30.0


class FetchError(Exception):
    """A URL could not be fetched; the message names the URL and why."""


def fetch_url(url: str) -> bytes:
    """The bytes at ``url``, with the same timeout and size cap as URL sources (no cache):
    for images named on the command line (predict, infer)."""
    import httpx

    with httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=True) as client:
        return _download(client, url, {})[0]


def _no_cookies() -> Any:
    """A cookie jar that keeps nothing: one URL's Set-Cookie must not change another's answer
    (each fetch used to have a client of its own)."""
    from http.cookiejar import CookieJar, DefaultCookiePolicy

    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def _download(client: Any, url: str, headers: dict[str, str]) -> tuple[bytes, dict[str, str], int]:
    """GET ``url`` (conditionally, with ``headers``): its bytes, headers and status (304: no body)."""
    import httpx

    try:
        with client.stream("GET", url, headers=headers) as resp:
            if resp.status_code == 304:
                return b"", dict(resp.headers), 304
            if resp.status_code >= 400:
                raise FetchError(f"{url}: HTTP {resp.status_code}")
            chunks, total = [], 0
            for chunk in resp.iter_bytes():
                total += len(chunk)
                if total > MAX_URL_BYTES:
                    raise FetchError(f"{url}: larger than {MAX_URL_BYTES // 2**20} MB")
                chunks.append(chunk)
            return b"".join(chunks), dict(resp.headers), resp.status_code
    except httpx.TimeoutException:
        raise FetchError(f"{url}: timed out after {TIMEOUT_SECONDS:.0f} s") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None


class UrlCache:
    """``.modelsync/cache/urls.json`` (validators and digests) + ``blobs/`` (the bytes)."""

    def __init__(self, root: Path):
        self.root = root
        self.index_path = root / "urls.json"
        self._lock = threading.Lock()
        self._dirty = False
        self._client: Any = None  # httpx.Client, made on first download
        try:
            self._index: dict[str, dict] = json.loads(self.index_path.read_bytes())
        except (OSError, ValueError):
            self._index = {}

    def blob_path(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return self.root / "blobs" / hexd[:2] / hexd[2:]

    def read(self, url: str, digest: str) -> bytes:
        """The bytes of ``url`` as planned; re-fetched if the cache lost them, and checked."""
        path = self.blob_path(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            data = self._download(url, {})[0]
            if sha256_digest(data) != digest:
                raise FetchError(f"{url}: content changed since the plan (expected {digest[:19]}…)") from None
            write_atomic(path, data)
            return data

    def resolve(self, url: str) -> tuple[str, int, bool]:
        """Fetch (or revalidate) ``url``; return its digest, its size and whether its first bytes
        are an accepted image format (checked once per content, kept in the index)."""
        entry = self._index.get(url)
        headers = {}
        if entry and self.blob_path(entry["digest"]).exists():
            if entry.get("etag"):
                headers["If-None-Match"] = entry["etag"]
            if entry.get("last_modified"):
                headers["If-Modified-Since"] = entry["last_modified"]
        data, resp_headers, status = self._download(url, headers)
        if status == 304 and entry:
            if "image" not in entry:  # an index from before the check: read the blob's head once
                image = self._blob_is_image(entry["digest"])
                with self._lock:
                    entry["image"] = image
                    self._dirty = True
            return entry["digest"], entry["size"], entry["image"]
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not path.exists():
            write_atomic(path, data)
        with self._lock:
            self._index[url] = {
                "digest": digest,
                "size": len(data),
                "etag": resp_headers.get("etag"),
                "last_modified": resp_headers.get("last-modified"),
                "image": sniff(data[:32]) is not None,
            }
            self._dirty = True
        return digest, len(data), self._index[url]["image"]

    def _blob_is_image(self, digest: str) -> bool:
        """Whether the cached bytes start like an accepted image; a blob gone since is given the
        benefit of the doubt (apply fetches it again, and the provider checks what it gets)."""
        try:
            with open(self.blob_path(digest), "rb") as f:
                return sniff(f.read(32)) is not None
        except OSError:
            return True

    def save(self) -> None:
        with self._lock:
            if self._dirty:
                write_atomic(self.index_path, json.dumps(self._index, indent=0, sort_keys=True).encode())
                self._dirty = False

    def _download(self, url: str, headers: dict[str, str]) -> tuple[bytes, dict[str, str], int]:
        """One HTTP client for all of this cache's downloads, made on first use: a client of its
        own per URL cost ~23 ms of CPU each (TLS set-up), minutes for a spec of 10k URLs."""
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=True, cookies=_no_cookies())
            client = self._client
        return _download(client, url, headers)

    def close(self) -> None:
        """Close the shared client; only when no download is running (a new one is made if needed)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
