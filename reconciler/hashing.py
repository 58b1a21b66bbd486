"""Content hashing of local files, with a stat-keyed cache so unchanged files cost a stat.

The cache maps a path to (size, mtime_ns, inode, digest): when all three stat fields
still match, the file is not read again. Cold hashing runs on every core, in
batches, because small files are bound by per-file Python overhead rather than by
sha256 itself (which releases the GIL only on large buffers).

Measured on 100k 1.7 KB PNGs, 2 cores (bench/bench_first_plan.py, bench/README.md):
the cache file is columnar JSON per directory (see HashCache), and files are read with os.open/os.read (half the cost of
``open()``, which builds a buffered file object per file).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple, Protocol

from reconciler.atomic import write_atomic

CACHE_VERSION = 2
_CHUNK = 1 << 20
# Below this many files to hash, a process pool costs more than it saves.
_POOL_THRESHOLD = 512
_BATCH = 256


class StatLike(Protocol):
    """What the cache is keyed on (FileStat, or sources.SourceItem from a directory walk).
    ``size`` -1: not stat-able (skipped: the caller reports it)."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def inode(self) -> int: ...


class FileStat(NamedTuple):
    """A StatLike from ``os.stat``."""

    path: str
    size: int
    mtime_ns: int
    inode: int


def stat_file(path: str) -> FileStat:
    st = os.stat(path)
    return FileStat(path, st.st_size, st.st_mtime_ns, st.st_ino)


def hash_file(path: str) -> str:
    """sha256 of a file's bytes as ``sha256:<hex>``."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest()


def _hash_batch(paths: Sequence[str]) -> list[str | OSError]:
    """Digests, or the OSError that stopped a file being read (so one bad file names itself
    instead of aborting the batch)."""
    out: list[str | OSError] = []
    for p in paths:
        try:
            out.append(hash_file(p))
        except OSError as exc:
            out.append(OSError(exc.errno, exc.strerror, p))
    return out


class HashCache:
    """The on-disk cache under ``.modelsync/cache/hashes.json``.

    Format 2: ``{"version": 2, "dirs": {dir: [names, sizes, mtimes, inodes, hexdigests]}}``:
    columns per directory rather than a list per file, because JSON decoding and object
    building cost per container (0.05 s instead of 0.2 s to load 100k entries). A
    directory's name index is built on its first lookup, with one C-level dict().
    """

    def __init__(self, path: Path):
        self.path = path
        self._dirs: dict[str, list[list]] = {}
        self._index: dict[str, dict[str, int]] = {}
        self._dirty = False
        try:
            raw = json.loads(path.read_bytes())
            if raw.get("version") == CACHE_VERSION:
                dirs = raw["dirs"]
                for cols in dirs.values():
                    if len(cols) != 5 or len({len(c) for c in cols}) != 1:
                        raise ValueError("ragged cache columns")
                self._dirs = dirs
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._dirs = {}  # a missing or corrupt cache only costs re-hashing

    def __len__(self) -> int:
        return sum(len(cols[0]) for cols in self._dirs.values())

    def _slot(self, path: str) -> tuple[list[list] | None, int | None]:
        directory, _, name = path.rpartition("/")
        cols = self._dirs.get(directory)
        if cols is None:
            return None, None
        index = self._index.get(directory)
        if index is None:
            index = self._index[directory] = dict(zip(cols[0], range(len(cols[0])), strict=True))
        return cols, index.get(name)

    def lookup(self, st: StatLike) -> str | None:
        cols, i = self._slot(st.path)
        if i is not None and cols[1][i] == st.size and cols[2][i] == st.mtime_ns and cols[3][i] == st.inode:  # type: ignore[index]
            return "sha256:" + cols[4][i]  # type: ignore[index]
        return None

    def store(self, st: StatLike, digest: str) -> None:
        cols, i = self._slot(st.path)
        hexd = digest.removeprefix("sha256:")
        if cols is None:
            directory = st.path.rpartition("/")[0]
            cols = self._dirs[directory] = [[], [], [], [], []]
            self._index[directory] = {}
        if i is None:
            directory, _, name = st.path.rpartition("/")
            self._index[directory][name] = len(cols[0])
            for col, value in zip(cols, (name, st.size, st.mtime_ns, st.inode, hexd), strict=True):
                col.append(value)
        else:
            cols[1][i], cols[2][i], cols[3][i], cols[4][i] = st.size, st.mtime_ns, st.inode, hexd
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        body = json.dumps({"version": CACHE_VERSION, "dirs": self._dirs}, separators=(",", ":"))
        write_atomic(self.path, body.encode())
        self._dirty = False

    def digests(
        self,
        stats: Sequence[StatLike],
        workers: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[str | OSError | None]:
        """The digest of each file, hashing only those the cache does not vouch for.

        An entry is an OSError for a file that could not be read, None for a ``size`` -1
        stat (the caller already reported it). ``on_progress(done, total)`` follows hashing.
        """
        lookup = self.lookup
        out: list[str | OSError | None] = [lookup(st) for st in stats]
        missing = [i for i, d in enumerate(out) if d is None and stats[i].size >= 0]
        if missing:
            paths = [stats[i].path for i in missing]
            for i, digest in zip(missing, hash_many(paths, workers, on_progress), strict=True):
                out[i] = digest
                if isinstance(digest, str):
                    self.store(stats[i], digest)
        return out

    def uncached(self, stats: Sequence[StatLike]) -> int:
        """How many of ``stats`` would be hashed (for a progress line before the work)."""
        return sum(1 for st in stats if st.size >= 0 and self.lookup(st) is None)


def hash_many(
    paths: Sequence[str],
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[str | OSError]:
    """Hash many files, in batches over a process pool when there are enough of them."""
    workers = workers or os.cpu_count() or 1
    total = len(paths)
    if workers <= 1 or total < _POOL_THRESHOLD:
        out = _hash_batch(paths)
        if on_progress is not None:
            on_progress(total, total)
        return out
    batch = max(16, min(_BATCH, total // (workers * 4) or 1))
    batches = [paths[i : i + batch] for i in range(0, total, batch)]
    import multiprocessing

    # fork: the workers need nothing but this module, and forking skips re-importing it.
    ctx = multiprocessing.get_context("fork")
    out = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for chunk in pool.map(_hash_batch, batches):
            out.extend(chunk)
            if on_progress is not None:
                on_progress(len(out), total)
    return out
