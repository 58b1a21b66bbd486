"""Content-addressed blob files: ``root/<2 hex>/<62 hex>``, named by sha256.

A blob is written (temp file, fsync, rename) *before* the row that references it is
committed, so a committed row always finds its bytes, whatever kills the process.
The reverse, a blob no row references, is harmless and ``collect_garbage`` removes it.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

from reconciler.local.errors import InvalidInputError, NotFoundError, storage_error_from_os

DIGEST_PREFIX = "sha256:"
_HEX = re.compile(r"^[0-9a-f]{64}$")


def digest_of(data: bytes) -> str:
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = root / "tmp"
        self._tmp.mkdir(exist_ok=True)

    def path(self, digest: str) -> Path:
        hexpart = digest.removeprefix(DIGEST_PREFIX)
        if not digest.startswith(DIGEST_PREFIX) or not _HEX.match(hexpart):
            raise InvalidInputError(f"digest: not a sha256 digest: {digest[:80]!r}")
        return self.root / hexpart[:2] / hexpart[2:]

    def put(self, data: bytes, digest: str | None = None) -> str:
        """Store ``data`` durably; return its digest. Storing the same bytes twice is free."""
        digest = digest or digest_of(data)
        final = self.path(digest)
        try:
            if final.stat().st_size == len(data):
                os.utime(final)  # restart the garbage collector's grace period for the new reference
                return digest
        except FileNotFoundError:
            pass
        try:
            final.parent.mkdir(exist_ok=True)
            tmp = self._tmp / f"{final.name[:16]}.{os.getpid()}.{time.monotonic_ns()}.part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:  # a full disk, a quota, a file size limit: one line naming the blob
            raise storage_error_from_os(exc, final) from None
        _fsync_dir(final.parent)
        return digest

    def get(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest}: not found") from None

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def collect_garbage(self, referenced: Iterable[str], *, older_than: float = 3600.0) -> int:
        """Remove blobs not in ``referenced`` and older than ``older_than`` seconds (the grace
        period covers a writer that stored its blob but has not committed its row yet)."""
        keep = {d.removeprefix(DIGEST_PREFIX) for d in referenced}
        cutoff = time.time() - older_than
        removed = 0
        for sub in self.root.iterdir():
            if not sub.is_dir() or len(sub.name) != 2:
                if sub == self._tmp:
                    for part in sub.iterdir():
                        if part.stat().st_mtime < cutoff:
                            part.unlink(missing_ok=True)
                continue
            for f in sub.iterdir():
                if sub.name + f.name not in keep and f.stat().st_mtime < cutoff:
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (not needed for crash safety, only for power loss)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
