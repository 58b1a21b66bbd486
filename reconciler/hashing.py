"""Content hashing of local files, with a stat-keyed cache so unchanged files cost a stat.

The cache maps a path to (size, mtime_ns, inode, digest): when all three stat fields
still match, the file is not read again. Cold hashing runs on every core, in
batches, because small files are bound by per-file Python overhead rather than by
sha256 itself (which releases the GIL only on large buffers).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reconciler.atomic import write_atomic

CACHE_VERSION = 1
_CHUNK = 1 << 20
# Below this many files to hash, a process pool costs more than it saves.
_POOL_THRESHOLD = 512
_BATCH = 256


@dataclass(frozen=True, slots=True)
class FileStat:
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
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _hash_batch(paths: Sequence[str]) -> list[str]:
    return [hash_file(p) for p in paths]


class HashCache:
    """The on-disk cache under ``.modelsync/cache/hashes.json``."""

    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, list] = {}
        self._dirty = False
        try:
            raw = json.loads(path.read_bytes())
            if raw.get("version") == CACHE_VERSION:
                self._entries = raw["entries"]
        except (OSError, ValueError, KeyError, AttributeError):
            self._entries = {}  # a missing or corrupt cache only costs re-hashing

    def lookup(self, st: FileStat) -> str | None:
        e = self._entries.get(st.path)
        if e is not None and e[0] == st.size and e[1] == st.mtime_ns and e[2] == st.inode:
            return e[3]
        return None

    def store(self, st: FileStat, digest: str) -> None:
        self._entries[st.path] = [st.size, st.mtime_ns, st.inode, digest]
        self._dirty = True

    def save(self) -> None:
        if self._dirty:
            body = json.dumps({"version": CACHE_VERSION, "entries": self._entries}, separators=(",", ":"))
            write_atomic(self.path, body.encode())
            self._dirty = False

    def digests(self, stats: Sequence[FileStat], workers: int | None = None) -> list[str]:
        """The digest of each file, hashing only those the cache does not vouch for."""
        out: list[str | None] = [self.lookup(st) for st in stats]
        missing = [i for i, d in enumerate(out) if d is None]
        if missing:
            paths = [stats[i].path for i in missing]
            for i, digest in zip(missing, hash_many(paths, workers), strict=True):
                out[i] = digest
                self.store(stats[i], digest)
        return out  # type: ignore[return-value]


def hash_many(paths: Sequence[str], workers: int | None = None) -> list[str]:
    """Hash many files, in batches over a process pool when there are enough of them."""
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(paths) < _POOL_THRESHOLD:
        return _hash_batch(paths)
    batch = max(16, min(_BATCH, len(paths) // (workers * 4) or 1))
    batches = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        results = pool.map(_hash_batch, batches)
        return [d for chunk in results for d in chunk]
