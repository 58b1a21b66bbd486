"""SQLite access for the embedded service: one connection per thread, explicit transactions.

Several processes may open the same data directory at once (``serve`` and the CLI),
so the database runs in WAL mode (readers never block the writer) with a busy
timeout, and every write is a single ``BEGIN IMMEDIATE`` transaction: a killed
process leaves either all of a change or none of it. The schema is versioned with
``PRAGMA user_version`` and upgraded in one transaction by whoever opens it first.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from reconciler.local.errors import LocalError, StateError, StorageError, WouldWait

BUSY_TIMEOUT_MS = 30_000
# Commits without waiting between two checkpoints: ~400 pages for small images, less than
# SQLite's own automatic checkpoint at 1,000 pages.
CHECKPOINT_EVERY = 100
_SQLITE_IOERR = 10  # primary result codes (an extended code's low byte)
_SQLITE_FULL = 13
_SQLITE_BUSY = 5

# Each entry upgrades the schema from version i to i + 1. Never edit a released entry:
# append a new one. AUTOINCREMENT keeps ids from being reused after a delete, since
# clients (the reconciler's state) remember ids.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE models (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner TEXT NOT NULL,
            title TEXT NOT NULL,
            type TEXT NOT NULL,
            purpose TEXT NOT NULL,
            tags TEXT NOT NULL DEFAULT '[]',
            config TEXT,
            created_at REAL NOT NULL)""",
        "CREATE INDEX models_owner ON models(owner, id)",
        """CREATE TABLE classes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
            title TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (model_id, title))""",
        """CREATE TABLE samples (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
            class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
            uid TEXT,
            digest TEXT NOT NULL,
            size INTEGER NOT NULL,
            media_type TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            caption TEXT,
            boxes TEXT,
            created_at REAL NOT NULL,
            source_url TEXT)""",
        "CREATE INDEX samples_model ON samples(model_id)",  # (model_id, rowid): one pass in id order
        "CREATE INDEX samples_class ON samples(class_id, size)",
        "CREATE UNIQUE INDEX samples_uid ON samples(model_id, uid) WHERE uid IS NOT NULL",
        """CREATE TABLE versions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
            version TEXT NOT NULL,
            status TEXT NOT NULL,
            dataset_digest TEXT NOT NULL,
            config_digest TEXT,
            config TEXT NOT NULL,
            model_type TEXT NOT NULL,
            base TEXT,
            save_name TEXT,
            metrics TEXT NOT NULL,
            started_at REAL NOT NULL,
            trained_at REAL,
            error TEXT,
            num_samples INTEGER NOT NULL,
            weights TEXT,
            UNIQUE (model_id, version))""",
        "CREATE INDEX versions_save_name ON versions(save_name) WHERE save_name IS NOT NULL",
        """CREATE TABLE training_jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
            state TEXT NOT NULL,
            progress REAL NOT NULL DEFAULT 0,
            version TEXT,
            error TEXT,
            config TEXT NOT NULL,
            config_digest TEXT,
            model_type TEXT NOT NULL,
            base TEXT,
            base_weights TEXT,
            save_name TEXT,
            cancel INTEGER NOT NULL DEFAULT 0,
            runner TEXT NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL)""",
        "CREATE INDEX training_jobs_model ON training_jobs(model_id, id)",
        "CREATE INDEX training_jobs_active ON training_jobs(state) WHERE state IN ('queued', 'training')",
        """CREATE TABLE inference_jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner TEXT NOT NULL,
            model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
            version TEXT NOT NULL,
            state TEXT NOT NULL,
            total INTEGER NOT NULL,
            done INTEGER NOT NULL DEFAULT 0,
            results TEXT NOT NULL DEFAULT '[]',
            error TEXT,
            output_layer TEXT NOT NULL,
            project TEXT,
            inputs TEXT NOT NULL,
            options TEXT NOT NULL DEFAULT '{}',
            runner TEXT NOT NULL,
            created_at REAL NOT NULL,
            finished_at REAL)""",
        "CREATE INDEX inference_jobs_active ON inference_jobs(state) WHERE state IN ('Queued', 'Running')",
        """CREATE TABLE sources (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner TEXT NOT NULL,
            project TEXT NOT NULL,
            name TEXT NOT NULL,
            digest TEXT NOT NULL,
            size INTEGER NOT NULL,
            created_at REAL NOT NULL)""",
        "CREATE INDEX sources_owner ON sources(owner, project, id)",
    ),
    (
        # Small blobs (see blobs.py) live here, committed with the rows that reference them.
        """CREATE TABLE blobs (
            digest TEXT PRIMARY KEY,
            data BLOB NOT NULL,
            created_at REAL NOT NULL)""",
        "CREATE INDEX blobs_created ON blobs(created_at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class Database:
    """Thread-safe handle on one SQLite file: each thread gets its own connection."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._unwaited_commits = 0  # commits made without waiting since checkpoint_due() said so
        self._write_lock = threading.Lock()
        self._conns: set[sqlite3.Connection] = set()
        self._closed = False
        try:
            migrate(self.conn())
        except StorageError:
            self.close()
            raise
        except sqlite3.DatabaseError as exc:
            self.close()
            raise storage_error(exc, path) or LocalError(f"{path}: cannot open the database: {exc}") from None

    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is not None:
            return c
        if self._closed:
            raise StateError("the service is closed")
        c = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            c.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            c.execute("PRAGMA journal_mode = WAL")  # creates the -wal and -shm files: may meet a full disk
            c.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
            c.execute("PRAGMA foreign_keys = ON")
        except sqlite3.OperationalError as exc:
            c.close()
            raise storage_error(exc, self.path) or exc from None
        self._local.conn = c
        with self._lock:
            self._conns.add(c)
        return c

    @contextmanager
    def write(self, *, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; nested use joins the outer one.

        ``wait=False``: raise WouldWait at once, before anything is written, when another
        thread or process holds the write lock, instead of queueing for it.
        """
        c = self.conn()
        if c.in_transaction:
            yield c
            return
        # Threads of this process queue here rather than in SQLite's busy handler, which
        # sleeps in steps of up to 100 ms; other processes still meet the busy timeout.
        if not self._write_lock.acquire(blocking=wait):
            raise WouldWait("the database is busy with another writer of this process")
        try:
            with self._storage_errors("writing"):
                if wait:
                    c.execute("BEGIN IMMEDIATE")
                else:
                    self._leave_checkpoints_to_others(c)
                    _begin_without_waiting(c)
                try:
                    yield c
                    c.execute("COMMIT")
                except BaseException:
                    if c.in_transaction:  # a failed COMMIT may leave it open: never let a later write join it
                        with suppress(sqlite3.Error):  # the error that got us here is the one to report
                            c.execute("ROLLBACK")
                    raise
            if not wait:
                self._unwaited_commits += 1
        finally:
            self._write_lock.release()

    def _leave_checkpoints_to_others(self, c: sqlite3.Connection) -> None:
        """A connection that writes without waiting (serve's event loop) does not run SQLite's
        automatic checkpoint at COMMIT: copying the WAL into the database and two fsyncs.
        ``checkpoint()``, called from a thread when ``checkpoint_due()``, does it instead."""
        if not getattr(self._local, "checkpoints_left", False):
            c.execute("PRAGMA wal_autocheckpoint = 0")
            self._local.checkpoints_left = True

    def checkpoint_due(self) -> bool:
        """True every CHECKPOINT_EVERY commits made without waiting (then reset)."""
        if self._unwaited_commits < CHECKPOINT_EVERY:
            return False
        self._unwaited_commits = 0
        return True

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database, without waiting for readers (PASSIVE)."""
        with self._storage_errors("checkpointing"):
            self.conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot across several queries (WAL readers never wait)."""
        c = self.conn()
        if c.in_transaction:
            yield c
            return
        with self._storage_errors("reading"):
            c.execute("BEGIN")
            try:
                yield c
            finally:
                if c.in_transaction:
                    c.execute("COMMIT")

    @contextmanager
    def _storage_errors(self, doing: str) -> Iterator[None]:
        """A full or failing disk -> StorageError naming the database file; other errors pass."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            err = storage_error(exc, self.path, doing)
            if err is None:
                raise
            raise err from None

    def release(self) -> None:
        """Close the calling thread's connection (job threads call it when they end)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            return
        self._local.conn = None
        with self._lock:
            self._conns.discard(c)
        c.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns), set()
        for c in conns:
            with suppress(sqlite3.Error):
                c.close()
        self._local = threading.local()


def _begin_without_waiting(c: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE with no busy timeout: another process's write lock -> WouldWait."""
    c.execute("PRAGMA busy_timeout = 0")
    try:
        c.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_BUSY:
            raise WouldWait("the database is busy with another process's write") from None
        raise
    finally:
        c.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def storage_error(exc: sqlite3.Error, path: Path, doing: str = "writing") -> StorageError | None:
    """SQLite's "database or disk is full" and "disk I/O error" as a one-line StorageError (None
    for any other error). The disk may fill in the database file, its WAL or its shared memory."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if primary == _SQLITE_FULL or "database or disk is full" in text:
        return StorageError(f"disk full {doing} {path}")
    if primary == _SQLITE_IOERR or "disk i/o error" in text:
        return StorageError(f"disk I/O error {doing} {path} (is the disk full or failing?)")
    return None


def migrate(c: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION; concurrent openers serialise on the write lock."""
    if c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    c.execute("BEGIN IMMEDIATE")
    try:
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LocalError(
                f"database schema version {version} is newer than this modelsync understands "
                f"({SCHEMA_VERSION}); upgrade modelsync"
            )
        for statements in MIGRATIONS[version:]:
            for sql in statements:
                c.execute(sql)
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        c.execute("ROLLBACK")
        raise
    c.execute("COMMIT")
