"""Expanding a declared sample source (path, glob, directory, URL) into concrete items."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})
_GLOB_CHARS = frozenset("*?[")


class SourceError(Exception):
    """A source that does not resolve; the message is shown at the source's spec position."""


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One concrete sample location: a local file or a URL."""

    display: str  # relative to the spec directory for files, the URL otherwise
    path: str | None = None  # absolute path
    url: str | None = None


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def expand(text: str, base_dir: Path, *, single: bool = False) -> list[SourceItem]:
    """Expand one source. ``single`` (a sample with its own uid) demands exactly one file."""
    if is_url(text):
        return [SourceItem(display=text, url=text)]
    if text.startswith("file://"):
        text = unquote(urlparse(text).path)
    base = str(base_dir)
    if any(c in text for c in _GLOB_CHARS):
        if single:
            raise SourceError(f"a sample with a uid must name one file, not a glob: {text}")
        matches = sorted(glob.glob(text, root_dir=base, recursive=True))
        items = [
            SourceItem(display=m, path=os.path.join(base, m))
            for m in matches
            if _is_image_name(m) and os.path.isfile(os.path.join(base, m))
        ]
        if not items:
            raise SourceError(f"no image files match: {text}")
        return items
    full = os.path.join(base, text)
    if os.path.isdir(full):
        if single:
            raise SourceError(f"a sample with a uid must name one file, not a directory: {text}")
        items = _walk_images(full, text)
        if not items:
            raise SourceError(f"no image files in directory: {text}")
        return items
    if os.path.isfile(full):
        return [SourceItem(display=os.path.normpath(text), path=os.path.normpath(full))]
    raise SourceError(f"no such file: {text}")


def _walk_images(full: str, shown: str) -> list[SourceItem]:
    """Every image file under a directory, recursively, in sorted relative-path order."""
    found: list[tuple[str, str]] = []
    shown = os.path.normpath(shown)
    for dirpath, dirnames, filenames in os.walk(full):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        sub = dirpath[len(full) :].lstrip(os.sep)  # cheaper than relpath over 100k files
        prefix = os.path.join(shown, sub) if sub else shown
        for name in filenames:
            if _is_image_name(name) and not name.startswith("."):
                found.append((os.path.join(prefix, name), os.path.join(dirpath, name)))
    found.sort()
    return [SourceItem(display=d, path=p) for d, p in found]
