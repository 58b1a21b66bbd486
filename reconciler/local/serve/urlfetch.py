"""Image inputs given as URLs, data: URIs or base64, turned into bytes safely.

A server that fetches URLs for its callers must not become a proxy into the network
it runs in: hosts are resolved first and private, loopback and link-local addresses
refused (unless ``allow_private_urls``), and the connection goes to the address that
was checked, so a DNS answer cannot change between the check and the fetch.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass

import httpx

from reconciler.local.errors import WouldWait

MAX_FETCH_BYTES = 20 * 2**20
MAX_REDIRECTS = 5


class InputError(ValueError):
    """The input cannot be turned into bytes; the message names the field and why."""


def _short(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def decode_data_uri(uri: str, field: str = "input") -> bytes:
    """``data:[<media type>][;base64],<data>`` -> bytes."""
    head, sep, payload = uri.partition(",")
    if not sep:
        raise InputError(f"{field}: malformed data: URI (no comma)")
    if head.endswith(";base64"):
        return decode_base64(payload, field)
    return urllib.parse.unquote_to_bytes(payload)


def decode_base64(value: str, field: str = "input") -> bytes:
    """Strict base64 (standard or URL-safe alphabet, whitespace and missing padding tolerated)."""
    text = "".join(value.split())
    if not text:
        raise InputError(f"{field}: empty")
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.b64decode(text, altchars=b"-_", validate=True)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{field}: not a URL, data: URI or base64 string: {_short(value)!r}") from None


def _address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


@dataclass
class UrlFetcher:
    """Fetches http(s) URLs with a timeout and a size cap."""

    allow_private: bool = False
    max_bytes: int = MAX_FETCH_BYTES
    timeout: float = 20.0

    def _resolve(self, host: str, port: int, field: str) -> str:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise InputError(f"{field}: cannot resolve host {host!r}") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        if not addresses:
            raise InputError(f"{field}: cannot resolve host {host!r}")
        if not self.allow_private:
            for ip in addresses:
                if not _address_allowed(ip):
                    raise InputError(f"{field}: host {host!r} resolves to a private address; refused")
        return str(addresses[0])

    def fetch(self, url: str, field: str = "input") -> bytes:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            parsed = urllib.parse.urlsplit(current)
            if parsed.scheme not in ("http", "https"):
                raise InputError(f"{field}: only http and https URLs can be fetched, got {_short(current)!r}")
            host = parsed.hostname
            if not host:
                raise InputError(f"{field}: URL has no host: {_short(current)!r}")
            try:
                port = parsed.port or (443 if parsed.scheme == "https" else 80)
            except ValueError:
                raise InputError(f"{field}: bad port in URL {_short(current)!r}") from None
            ip = self._resolve(host, port, field)
            ip_host = f"[{ip}]" if ":" in ip else ip
            target = urllib.parse.urlunsplit(
                (parsed.scheme, f"{ip_host}:{port}", parsed.path or "/", parsed.query, "")
            )
            host_header = host if parsed.port is None else f"{host}:{parsed.port}"
            extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
            try:
                with (
                    httpx.Client(timeout=self.timeout, follow_redirects=False) as client,
                    client.stream("GET", target, headers={"Host": host_header}, extensions=extensions) as resp,
                ):
                    if resp.is_redirect:
                        location = resp.headers.get("location", "")
                        current = urllib.parse.urljoin(current, location)
                        continue
                    if resp.status_code != 200:
                        raise InputError(f"{field}: fetching {_short(url)!r} answered HTTP {resp.status_code}")
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise InputError(f"{field}: {_short(url)!r} is larger than {self.max_bytes} bytes")
                    chunks: list[bytes] = []
                    size = 0
                    for chunk in resp.iter_bytes():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise InputError(f"{field}: {_short(url)!r} is larger than {self.max_bytes} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise InputError(f"{field}: fetching {_short(url)!r} failed: {type(exc).__name__}") from None
        raise InputError(f"{field}: too many redirects fetching {_short(url)!r}")

    def decode_input(self, value: str, field: str = "input", *, allow_base64: bool = True, wait: bool = True) -> bytes:
        """An image input as vendors take it: http(s) URL, data: URI, or raw base64.
        ``wait=False``: WouldWait instead of fetching a URL."""
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{field}: must be a non-empty string")
        v = value.strip()
        lower = v[:8].lower()
        if lower.startswith("data:"):
            return decode_data_uri(v, field)
        if lower.startswith(("http://", "https://")):
            if not wait:
                raise WouldWait(f"{field}: a URL to fetch")
            return self.fetch(v, field)
        if "://" in v[:16]:
            raise InputError(f"{field}: only http and https URLs can be fetched, got {_short(v)!r}")
        if not allow_base64:
            raise InputError(f"{field}: expected an http(s) URL or a data: URI, got {_short(v)!r}")
        return decode_base64(v, field)
