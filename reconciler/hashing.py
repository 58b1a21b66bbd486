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
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from reconciler.atomic import write_atomic

CACHE_VERSION = 2
_CHUNK = 1 << 20
# Below this many files to hash, a process pool costs more than it saves.
_POOL_THRESHOLD = 512
_BATCH = 1024


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

    Format 2: ``{"version": 2, "dirs": {dir: [names, sizes, mtimes, inodes, hexdigests]}}``,
    each directory's columns sorted by name. Columns rather than a list per file because
    JSON decoding and object building cost per container (0.05 s instead of 0.2 s to load
    100k entries); sorted because a directory walk yields its files in the same order, so
    an unchanged directory is recognised by comparing whole columns (C-speed list
    equality) instead of looking up each file (0.15 s per 100k files, measured).
    """

    def __init__(self, path: Path):
        self.path = path
        self._dirs: dict[str, list[list]] = {}
        self._index: dict[str, dict[str, int]] = {}
        self._changed: set[str] = set()  # directories to re-sort and write
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
        if i is None:
            return None
        if cols[1][i] == st.size and cols[2][i] == st.mtime_ns and cols[3][i] == st.inode:  # type: ignore[index]
            return "sha256:" + cols[4][i]  # type: ignore[index]
        return None

    def store(self, st: StatLike, digest: str) -> None:
        directory, _, name = st.path.rpartition("/")
        cols, i = self._slot(st.path)
        hexd = digest.removeprefix("sha256:")
        if cols is None:
            cols = self._dirs[directory] = [[], [], [], [], []]
            self._index[directory] = {}
        if i is None:
            self._index[directory][name] = len(cols[0])
            for col, value in zip(cols, (name, st.size, st.mtime_ns, st.inode, hexd), strict=True):
                col.append(value)
        else:
            cols[1][i], cols[2][i], cols[3][i], cols[4][i] = st.size, st.mtime_ns, st.inode, hexd
        self._changed.add(directory)

    def save(self) -> None:
        if not self._changed:
            return
        for directory in self._changed:
            cols = self._dirs.get(directory)
            if cols is None:
                continue
            names = cols[0]
            if names == sorted(names):  # a directory walk stores them in order already
                continue
            order = sorted(range(len(names)), key=names.__getitem__)
            self._dirs[directory] = [[col[k] for k in order] for col in cols]
            self._index.pop(directory, None)
        body = json.dumps({"version": CACHE_VERSION, "dirs": self._dirs}, separators=(",", ":"))
        write_atomic(self.path, body.encode())
        self._changed.clear()

    def _whole_directory(self, stats: Sequence[StatLike], start: int, directory: str) -> int:
        """If ``stats[start:]`` begins with exactly the cached files of ``directory``, all
        unchanged, return how many; else 0."""
        cols = self._dirs.get(directory)
        if not cols:
            return 0
        names, sizes, mtimes, inodes, _ = cols
        stop = start + len(names)
        if stop > len(stats):
            return 0
        chunk = stats[start:stop]
        prefix = directory + "/"
        if (
            [st.size for st in chunk] == sizes
            and [st.mtime_ns for st in chunk] == mtimes
            and [st.inode for st in chunk] == inodes
            and [st.path for st in chunk] == [prefix + n for n in names]
        ):
            return len(names)
        return 0

    def _prune(self, directory: str, seen: set[str]) -> None:
        """Drop cached files of ``directory`` that no longer exist (so the directory can be
        recognised whole again next time); files merely not asked about stay."""
        cols = self._dirs.get(directory)
        if not cols:
            return
        gone = {n for n in cols[0] if n not in seen and not os.path.lexists(directory + "/" + n)}
        if gone:
            keep = [k for k, n in enumerate(cols[0]) if n not in gone]
            self._dirs[directory] = [[col[k] for k in keep] for col in cols]
            self._index.pop(directory, None)
            self._changed.add(directory)

    def digests(
        self,
        stats: Sequence[StatLike],
        workers: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[str | OSError | None]:
        """The digest of each file, hashing only those the cache does not vouch for.

        An entry is an OSError for a file that could not be read, None for a ``size`` -1
        stat (the caller already reported it). ``on_progress(done, total)`` is called with
        done 0 before any hashing starts, then as batches finish.
        """
        n = len(stats)
        out: list[str | OSError | None] = [None] * n
        missing: list[int] = []
        tried: set[str] = set()  # directories checked whole
        one_by_one: dict[str, set[str]] = {}  # directory -> names looked up file by file
        dirs = self._dirs
        i = 0
        while i < n:
            st = stats[i]
            directory, _, name = st.path.rpartition("/")
            if directory not in dirs:  # never hashed here (a first plan): nothing to look up
                if st.size >= 0:
                    missing.append(i)
                i += 1
                continue
            if directory not in tried:
                tried.add(directory)
                whole = self._whole_directory(stats, i, directory)
                if whole:
                    out[i : i + whole] = ["sha256:" + h for h in self._dirs[directory][4]]
                    i += whole
                    continue
            one_by_one.setdefault(directory, set()).add(name)
            digest = self.lookup(st)
            out[i] = digest
            if digest is None and st.size >= 0:
                missing.append(i)
            i += 1
        for directory, seen in one_by_one.items():
            self._prune(directory, seen)
        if missing:
            paths = [stats[i].path for i in missing]
            todo = missing
            if len(set(paths)) < len(paths):  # a file declared twice (overlapping globs): hash it once
                todo = list({stats[i].path: i for i in reversed(missing)}.values())[::-1]
                paths = [stats[i].path for i in todo]
            if on_progress is not None:
                on_progress(0, len(todo))
            results = hash_many(paths, workers, on_progress)
            if todo is missing:
                for i, d in zip(missing, results, strict=True):
                    out[i] = d
            else:
                by_path = dict(zip(paths, results, strict=True))
                for i in missing:
                    out[i] = by_path[stats[i].path]
            self._store_many([(stats[i], d) for i, d in zip(todo, results, strict=True) if isinstance(d, str)])
        return out

    def _store_many(self, hashed: list[tuple[StatLike, str]]) -> None:
        """``store`` for many files; a directory the cache never saw gets its columns in one go
        (the cold 100k-file plan: 0.2 s of per-file stores before)."""
        fresh: dict[str, list[list]] = {}
        for st, digest in hashed:
            directory, _, name = st.path.rpartition("/")
            if directory in self._dirs:
                self.store(st, digest)
                continue
            cols = fresh.get(directory)
            if cols is None:
                cols = fresh[directory] = [[], [], [], [], []]
            cols[0].append(name)
            cols[1].append(st.size)
            cols[2].append(st.mtime_ns)
            cols[3].append(st.inode)
            cols[4].append(digest[7:])
        for directory, cols in fresh.items():
            self._dirs[directory] = cols
            self._index.pop(directory, None)
            self._changed.add(directory)


# The paths of the hash_many call in progress: forked workers inherit them, so a task is
# just a (start, stop) range and no path is pickled (measured: ~20% off 100k small files).
_JOB: Sequence[str] = ()
_JOB_LOCK = threading.Lock()


def _hash_range(bounds: tuple[int, int]) -> tuple[str, dict[int, OSError]]:
    """Worker: the hex digests of ``_JOB[start:stop]`` joined by newlines (one small object
    to send back), and the errors by offset ("" in the text for those)."""
    start, stop = bounds
    hexes: list[str] = []
    errors: dict[int, OSError] = {}
    for offset, digest in enumerate(_hash_batch(_JOB[start:stop])):
        if isinstance(digest, str):
            hexes.append(digest[7:])
        else:
            hexes.append("")
            errors[offset] = digest
    return "\n".join(hexes), errors


def hash_many(
    paths: Sequence[str],
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[str | OSError]:
    """Hash many files, in ranges over a pool of forked processes when there are enough."""
    global _JOB
    workers = workers or os.cpu_count() or 1
    total = len(paths)
    if workers <= 1 or total < _POOL_THRESHOLD:
        out = _hash_batch(paths)
        if on_progress is not None:
            on_progress(total, total)
        return out
    batch = max(16, min(_BATCH, total // (workers * 4) or 1))
    ranges = [(i, min(i + batch, total)) for i in range(0, total, batch)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor  # imported here: a warm plan never needs it

    # fork: the workers need nothing but this module and _JOB, and forking skips re-importing.
    ctx = multiprocessing.get_context("fork")
    out: list[str | OSError] = []
    with _JOB_LOCK:
        _JOB = paths
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for text, errors in pool.map(_hash_range, ranges):
                    base = len(out)
                    out.extend("sha256:" + h for h in text.split("\n"))
                    for offset, exc in errors.items():
                        out[base + offset] = exc
                    if on_progress is not None:
                        on_progress(len(out), total)
        finally:
            _JOB = ()
    return out
