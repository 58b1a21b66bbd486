"""Expanding a declared sample source (path, glob, directory, URL) into concrete items.

A directory of 100k images is the common case, so the walk is the hot loop of a
no-op plan: it uses ``os.scandir`` on directory descriptors (the kernel resolves
each name relative to its directory) and keeps the ``stat`` it needs anyway, so
resolve never stats a file twice.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

from specs.urls import file_url_path, file_url_problem, is_file_url

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})
_IMAGE_SUFFIXES = tuple(IMAGE_EXTENSIONS)
_GLOB_CHARS = frozenset("*?[")


class SourceError(Exception):
    """A source that does not resolve; the message is shown at the source's spec position."""


class SourceItem(NamedTuple):
    """One concrete sample location: a local file or a URL; the walk's record of one file.

    A tuple, not a dataclass: a directory source makes one per file, and building
    100k frozen dataclasses costs a noticeable share of a no-op plan. ``size`` is -1
    when the item was not stat-ed during expansion (URLs, single files, globs).
    """

    display: str  # relative to the spec directory for files, the URL otherwise
    path: str | None = None  # absolute path
    url: str | None = None
    size: int = -1
    mtime_ns: int = 0
    inode: int = 0


class Items(NamedTuple):
    """The items a source expanded to, column-wise: SourceItem's fields in its order, one list
    each. Made by one transpose in C (``zip(*items)``): at 100k items, 4x faster than a
    comprehension per field (measured), and the stat columns go to the hash cache as they are."""

    display: list[str]
    path: list[str | None]
    url: list[str | None]
    size: list[int]  # -1: not stat-ed by the expansion (URLs, single files, globs) or not stat-able
    mtime_ns: list[int]
    inode: list[int]

    @classmethod
    def of(cls, items: list[SourceItem]) -> Items:
        if not items:
            return cls([], [], [], [], [], [])
        return cls._make(list(column) for column in zip(*items, strict=True))


assert Items._fields == SourceItem._fields  # the transpose above relies on it

Walker = Callable[[str, str], Items]
"""(absolute directory, directory as shown) -> the images under it: walk_images, or a walk
that already ran (reconciler.walkahead)."""


def is_url(text: str | None) -> bool:
    """An http(s) URL (the scheme in any case, as validation accepts it)."""
    return bool(text) and text[:8].lower().startswith(("http://", "https://"))  # type: ignore[index]


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(_IMAGE_SUFFIXES) and not name.startswith(".")


def local_text(text: str) -> str:
    """A local source as a path relative to the spec directory (or absolute): file:// decoded.
    A file URL's host is not part of the path: expand refuses one other than localhost."""
    return file_url_path(text) if is_file_url(text) else text


def is_glob(text: str) -> bool:
    return any(c in text for c in _GLOB_CHARS)


def expand(text: str, base_dir: Path, *, single: bool = False, walk: Walker | None = None) -> Items:
    """Expand one source. ``single`` (a sample with its own uid) demands exactly one file.
    ``walk`` lists a directory (default: walk_images)."""
    if is_url(text):
        return Items.of([SourceItem(display=text, url=text)])
    if is_file_url(text) and (problem := file_url_problem(text)) is not None:
        raise SourceError(f"{problem}, got {text!r}")  # load_spec refuses it first; never read '' (the spec dir)
    text = local_text(text)
    if "\x00" in text:  # os.stat would raise ValueError; load_spec refuses control characters first
        raise SourceError(f"a path must not contain a NUL character, got {text!r}")
    base = str(base_dir)
    if is_glob(text):
        if single:
            raise SourceError(f"a sample with a uid must name one file, not a glob: {text}")
        matches = sorted(glob.glob(text, root_dir=base, recursive=True))
        items = [
            SourceItem(display=m, path=os.path.join(base, m))
            for m in matches
            if _is_image_name(os.path.basename(m)) and os.path.isfile(os.path.join(base, m))
        ]
        if not items:
            raise SourceError(f"no image files match: {text}")
        return Items.of(items)
    full = os.path.join(base, text)
    try:
        mode = os.stat(full).st_mode
    except FileNotFoundError:
        raise SourceError(f"no such file: {text}") from None
    except OSError as exc:  # there, but not readable: say why (e.g. a symlink loop)
        raise SourceError(f"cannot read {text}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        if single:
            raise SourceError(f"a sample with a uid must name one file, not a directory: {text}")
        found = (walk or walk_images)(full, text)
        if not found.display:
            raise SourceError(f"no image files in directory: {text}")
        return found
    if stat.S_ISREG(mode):
        return Items.of([SourceItem(display=os.path.normpath(text), path=os.path.normpath(full))])
    raise SourceError(f"not a regular file: {text}")


def walk_images(full: str, shown: str) -> Items:
    """Every image file under a directory, recursively (hidden entries skipped), sorted by
    relative path, each with its size, mtime_ns and inode."""
    found: list[SourceItem] = []
    _scan(os.path.normpath(full), os.path.normpath(shown), found)
    found.sort(key=itemgetter(0))
    return Items.of(found)


def _scan(directory: str, shown: str, found: list[SourceItem]) -> None:
    """One directory: files into ``found``, then its subdirectories (the loop per entry is the
    hot path: keep it to a name test, one stat and one tuple). Like os.walk, symlinked
    directories are not followed; an unreadable directory is an error, not a silent gap."""
    subdirs: list[str] = []
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY) if _SCANDIR_FD else None
    except OSError as exc:
        raise SourceError(f"cannot read directory {shown}: {exc.strerror}") from None
    try:
        with os.scandir(fd if fd is not None else directory) as entries:
            append = found.append
            for entry in entries:
                name = entry.name
                if name[0] == ".":
                    continue
                if entry.is_dir():
                    if not entry.is_symlink():
                        subdirs.append(name)
                elif name.lower().endswith(_IMAGE_SUFFIXES):
                    try:
                        st = entry.stat()  # with a dir fd: fstatat(fd, name), no path walk from /
                    except OSError:  # e.g. a dangling symlink: resolve's own stat reports it
                        append(SourceItem(shown + "/" + name, directory + "/" + name))
                        continue
                    append(
                        SourceItem(
                            shown + "/" + name, directory + "/" + name, None, st.st_size, st.st_mtime_ns, st.st_ino
                        )
                    )
    except OSError as exc:
        raise SourceError(f"cannot read directory {shown}: {exc.strerror}") from None
    finally:
        if fd is not None:
            os.close(fd)
    for name in subdirs:
        _scan(directory + "/" + name, shown + "/" + name, found)


_SCANDIR_FD = os.scandir in os.supports_fd and hasattr(os, "O_DIRECTORY")
