"""URL syntax rules for sample URLs and provider base_url, checked by validate with no network.

A URL that passes here must not fail later for its syntax: plan would otherwise stop
with an internal error after the spec was declared valid, or, for a file URL, read a
different file than the one meant. Messages never include the URL itself: the caller
appends the value (or, for a value from the environment, a stand-in for it).
"""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit

from specs.names import has_control

FILE_HOSTS = ("", "localhost")
_FILE_PREFIX = "file://"


def _split(value: str) -> SplitResult | str:
    """The parts of ``value``, or what is wrong with its syntax."""
    if has_control(value):
        return "the URL must not contain control characters"
    try:
        return urlsplit(value)
    except ValueError:  # the only cause: brackets around an IPv6 host that do not match
        return "the URL's host is malformed (an IPv6 address goes in [brackets])"


def http_url_problem(value: str) -> str | None:
    """What is wrong with an http(s) URL (None: nothing): it needs a host and, if any, a port from 1 to 65535."""
    parts = _split(value)
    if isinstance(parts, str):
        return parts
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "the URL has no host"
    if any(c.isspace() for c in parts.hostname):
        return "the URL's host must not contain spaces"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "the URL's port must be a number from 1 to 65535"
    return None


def file_url_problem(value: str) -> str | None:
    """What is wrong with a file URL (None: nothing). Only file:///path and file://localhost/path
    name a local file: ``file://data/x.png`` would read ``data`` as a host and lose it."""
    if has_control(value):
        return "the URL must not contain control characters"
    host, path = _file_parts(value)
    if host.lower() not in FILE_HOSTS:
        return "a file URL takes no host: write file:///absolute/path (or a path relative to the spec, without file://)"
    if not path:
        return "a file URL needs an absolute path: write file:///absolute/path"
    if has_control(unquote(path)):  # %00 and the like: no file is named so
        return "the URL's path must not contain control characters, %-escaped or not"
    return None


def is_file_url(text: str) -> bool:
    return text[: len(_FILE_PREFIX)].lower() == _FILE_PREFIX


def file_url_path(value: str) -> str:
    """The local path a file URL names, percent-decoded. ``?`` and ``#`` stay in the path: they
    are glob characters or part of a file name here, never a query or a fragment."""
    return unquote(_file_parts(value)[1])


def _file_parts(value: str) -> tuple[str, str]:
    """(host, path) of a ``file://`` URL; the path keeps its leading slash."""
    host, slash, path = value[len(_FILE_PREFIX) :].partition("/")
    return host, slash + path
