"""Walking the spec's directory sources in a forked process while the plan reads the remote.

A no-op plan over 100k files spends its time in two halves that are both GIL-bound
Python: walking the files (100k ``stat`` calls and their records) and reading the remote
(100k rows of the embedded backend, or a vendor's network round trips). Threads do not
overlap them (tried: both halves slowed down; bench/README.md), a second process does:
the child walks and sends the columns back packed (two strings and three arrays, so
that packing and unpacking are C loops), while the parent reads the state and the remote.

The walk ahead only ever saves time: with no ``fork`` on the platform, or a child that
fails in any way, the directory is walked in the parent as before, and a directory the
child could not read raises the same SourceError the parent's walk would.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import tempfile
from array import array
from typing import Any, BinaryIO

from reconciler.resolve import declared_sources, source_text
from reconciler.sources import Items, SourceError, is_glob, is_url, local_text, walk_images

Directory = tuple[str, str]  # (absolute path, as shown): walk_images' arguments
Packed = tuple[str, str, bytes, bytes, bytes]  # see _pack


def spec_directories(spec: Any, targets: tuple[str, ...] = ()) -> list[Directory]:
    """The declared sources of ``targets`` (all models when empty) that are directories, as
    sources.expand will walk them (a directory given to a sample with a uid is an error there,
    not a walk)."""
    base = str(spec.base_dir)
    found: dict[Directory, None] = {}
    for _, _, entry, _ in declared_sources(spec, set(targets)):
        text, single = source_text(entry)
        if single or is_url(text):
            continue
        text = local_text(text)
        if is_glob(text):
            continue
        full = os.path.join(base, text)
        if os.path.isdir(full):
            found[(full, text)] = None
    return list(found)


class WalkAhead:
    """A sources.Walker whose directories are walked in a forked child, started at once.

    The child writes each directory's walk to an unnamed temporary file as soon as it is
    done, and its place in the file down a pipe, in the order given; the caller asks for
    them in the same order (resolve expands sources in spec order), so it works on one
    directory while the child walks the next, and holds one directory's packed copy at a
    time. (Down the pipe itself, the child would stall on its 64 KiB buffer until the
    parent read: measured slower than no walk ahead.) Use as a context manager: leaving
    it before everything was read stops the child.
    """

    def __init__(self, directories: list[Directory]):
        self._pid = 0
        self._notices: BinaryIO | None = None  # the pipe: (directory, offset, length) per walk
        self._data: BinaryIO | None = None  # the walks, packed and pickled
        self._expected = set(directories)  # sent by the child, not yet received
        self._received: dict[Directory, Packed | SourceError] = {}  # read ahead of their turn
        if directories and hasattr(os, "fork"):
            try:
                self._start(directories)
            except BaseException:  # e.g. Ctrl-C right after the fork: no child left behind
                self.close()
                raise

    def __enter__(self) -> WalkAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, full: str, shown: str) -> Items:
        """The images under ``full``: the child's walk of it, or a walk here."""
        key = (full, shown)
        while key in self._expected and self._notices is not None:
            self._receive()
        # Taken, not kept: a directory declared twice is walked again here the second time
        # (at once: not after reading everything the child has still to send).
        found = self._received.pop(key, None)
        if found is None:
            return walk_images(full, shown)
        if isinstance(found, SourceError):
            raise found
        return _unpack(found)

    def close(self) -> None:
        """Stop the child if it is still running, and wait for it."""
        for stream in (self._notices, self._data):
            if stream is not None:
                stream.close()
        self._notices = self._data = None
        if self._pid > 0:
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
        self._pid = 0

    def _start(self, directories: list[Directory]) -> None:
        try:
            self._data = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
            read_end, write_end = os.pipe()
        except OSError:
            self.close()
            return
        parent = os.getpid()
        try:
            self._pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            self.close()
            return
        if self._pid == 0:  # the child: walk, send, and leave without running any of the parent's exit code
            code = 1
            try:
                os.close(read_end)
                gc.disable()  # the walk makes no cycles
                with open(write_end, "wb") as notices:
                    _send_walks(directories, self._data, notices, parent)
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        self._notices = open(read_end, "rb")  # noqa: SIM115 (closed by close())

    def _receive(self) -> None:
        """Read the child's next walk; at the end of the stream, or on anything unexpected (a
        child that died half-way), stop reading: what was not received is walked here."""
        assert self._notices is not None and self._data is not None
        try:
            key, offset, length = pickle.load(self._notices)
            body = os.pread(self._data.fileno(), length, offset)
            if len(body) != length:
                raise EOFError("short read")
            self._received[key] = pickle.loads(body)
            self._expected.discard(key)
        except Exception:
            self.close()


def _send_walks(directories: list[Directory], data: BinaryIO, notices: BinaryIO, parent: int) -> None:
    """The child's work: each directory's packed walk (or its SourceError) pickled into
    ``data``, and where it lies sent down ``notices`` once it is there. It stops when the
    parent is gone (killed: nobody would read the rest)."""
    offset = 0
    for key in directories:
        if os.getppid() != parent:
            return
        try:
            found: Packed | SourceError = _pack(walk_images(*key))
        except SourceError as exc:
            found = exc
        body = pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL)
        data.write(body)
        data.flush()
        pickle.dump((key, offset, len(body)), notices)
        notices.flush()
        offset += len(body)


def _pack(items: Items) -> Packed:
    """A walk's columns as two NUL-joined strings (no path holds a NUL) and three int arrays.
    A walk has no URLs: that column is not sent."""
    return (
        "\0".join(items.display),
        "\0".join(items.path),  # type: ignore[arg-type]
        array("q", items.size).tobytes(),
        array("q", items.mtime_ns).tobytes(),
        array("Q", items.inode).tobytes(),
    )


def _unpack(packed: Packed) -> Items:
    display, path, size, mtime_ns, inode = packed
    if not size:
        return Items([], [], [], [], [], [])
    sizes = array("q", size).tolist()
    return Items(
        display.split("\0"),
        path.split("\0"),  # type: ignore[arg-type]
        [None] * len(sizes),
        sizes,
        array("q", mtime_ns).tolist(),
        array("Q", inode).tolist(),
    )
