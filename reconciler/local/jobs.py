"""Background jobs of the embedded service: training runs and batch inference.

A job is a row first (so every process sees it) and a daemon thread of the process
that started it second. The row records which process runs it (pid + that process's
start time, so a recycled pid is not mistaken for the runner). Any process that
finds a queued or running job whose runner is gone marks it failed: serve and the
CLI may share a data directory, so only jobs of *dead* processes are touched.

Cancellation is cooperative: a flag in the row (visible across processes) and an
event in this process, both read by the trainer's progress callback.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from reconciler.local.blobs import BlobStore
from reconciler.local.db import Database
from reconciler.local.errors import LocalError
from reconciler.local.records import InferenceJob, TrainingJob

TRAIN_ACTIVE = ("queued", "training")
INFER_ACTIVE = ("Queued", "Running")
PROGRESS_EVERY = 0.5  # seconds between progress writes (and cross-process cancel checks)
INFER_CHUNK = 32  # images per predictor call; also how often `done` is written
PREDICTOR_CACHE_SIZE = 8

TRAINING_JOB_COLUMNS = "id, model_id, state, progress, version, error"
INFERENCE_JOB_COLUMNS = "id, owner, model_id, version, state, total, done, results, error, output_layer, project"


def training_job(row: tuple) -> TrainingJob:
    return TrainingJob(*row)


def inference_job(row: tuple) -> InferenceJob:
    rid, owner, model_id, version, state, total, done, results, error, layer, project = row
    return InferenceJob(rid, owner, model_id, version, state, total, done, tuple(json.loads(results)), error, layer,
                        project)


# --------------------------------------------------------------------------- digests and JSON


def dataset_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """sha256 of the sorted ``class<TAB>digest`` lines (the same rule as the reconciler's)."""
    lines = sorted(f"{cls}\t{digest}" for cls, digest in pairs)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain)


def config_digest(model_type: str, base: str | None, config: dict[str, Any]) -> str:
    """Digest of everything besides the data that shapes a run (the reconciler's rule)."""
    body = canonical_json({"model_type": model_type, "base": base, "config": config})
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def to_json(value: Any) -> str:
    """JSON for storage; numpy scalars and arrays (from the trainer) become plain values."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_plain)


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def version_name(taken: Callable[[str], bool], started_at: float) -> str:
    """``YYYYMMDD_HHMMSS`` (UTC) of the start, plus one second until the name is free."""
    t = int(started_at)
    while True:
        name = time.strftime("%Y%m%d_%H%M%S", time.gmtime(t))
        if not taken(name):
            return name
        t += 1


# --------------------------------------------------------------------------- process liveness


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) of a process, from /proc; None if unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _token_of(pid: int) -> str:
    stat = _proc_stat(pid)
    return f"{pid}:{stat[1] if stat else ''}"


PROCESS_TOKEN = _token_of(os.getpid())


def process_token() -> str:
    """This process's runner token (recomputed after a fork)."""
    global PROCESS_TOKEN
    if not PROCESS_TOKEN.startswith(f"{os.getpid()}:"):
        PROCESS_TOKEN = _token_of(os.getpid())
    return PROCESS_TOKEN


def runner_alive(token: str) -> bool:
    """Whether the process a runner token names still runs (a zombie counts as dead)."""
    pid_text, _, start = token.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return not Path("/proc/self/stat").exists()  # no /proc on this OS: trust kill(0)
    state, started = stat
    return state not in ("Z", "X") and (not start or started == start)


# Jobs running in this process, over every LocalService instance: (db path, kind, id).
_RUNNING: set[tuple[str, str, int]] = set()
_RUNNING_LOCK = threading.Lock()


# --------------------------------------------------------------------------- the manager


class JobManager:
    """Starts, cancels and reaps the jobs of one LocalService."""

    def __init__(self, db: Database, blobs: BlobStore):
        self.db = db
        self.blobs = blobs
        self._key = str(db.path.resolve())
        self._lock = threading.Lock()
        self._threads: dict[tuple[str, int], threading.Thread] = {}
        self._cancel: dict[tuple[str, int], threading.Event] = {}
        self._closing = threading.Event()
        self._predictors: OrderedDict[tuple[int, str], Any] = OrderedDict()
        self._predictor_lock = threading.Lock()

    # -- bookkeeping -------------------------------------------------------------------
    def claim(self, kind: str, job_id: int) -> None:
        """Mark a job as run by this process *before* its row commits, so that no other
        instance in this process reaps it in between."""
        with _RUNNING_LOCK:
            _RUNNING.add((self._key, kind, job_id))
        with self._lock:
            self._cancel[(kind, job_id)] = threading.Event()

    def unclaim(self, kind: str, job_id: int) -> None:
        with _RUNNING_LOCK:
            _RUNNING.discard((self._key, kind, job_id))
        with self._lock:
            self._cancel.pop((kind, job_id), None)
            self._threads.pop((kind, job_id), None)

    def launch(self, kind: str, job_id: int) -> None:
        target = self._run_training if kind == "training" else self._run_inference
        thread = threading.Thread(target=self._guard, args=(kind, job_id, target), daemon=True,
                                  name=f"modelsync-{kind}-{job_id}")
        with self._lock:
            self._threads[(kind, job_id)] = thread
        thread.start()

    def request_cancel(self, kind: str, job_id: int) -> None:
        with self._lock:
            event = self._cancel.get((kind, job_id))
        if event is not None:
            event.set()

    def _canceled(self, kind: str, job_id: int) -> bool:
        with self._lock:
            event = self._cancel.get((kind, job_id))
        return self._closing.is_set() or (event is not None and event.is_set())

    def is_alive(self, kind: str, job_id: int, runner: str) -> bool:
        if runner == process_token():
            with _RUNNING_LOCK:
                return (self._key, kind, job_id) in _RUNNING
        return runner_alive(runner)

    def reap(self) -> int:
        """Fail the queued/running jobs whose process is gone; return how many."""
        with self.db.read() as c:
            train = c.execute(
                "SELECT id, runner FROM training_jobs WHERE state IN ('queued', 'training')"
            ).fetchall()
            infer = c.execute("SELECT id, runner FROM inference_jobs WHERE state IN ('Queued', 'Running')").fetchall()
        dead_train = [(i, r) for i, r in train if not self.is_alive("training", i, r)]
        dead_infer = [(i, r) for i, r in infer if not self.is_alive("inference", i, r)]
        if not dead_train and not dead_infer:
            return 0
        now = time.time()
        with self.db.write() as c:
            for job_id, runner in dead_train:
                c.execute(
                    "UPDATE training_jobs SET state = 'failed', error = ?, finished_at = ? "
                    "WHERE id = ? AND state IN ('queued', 'training') AND runner = ?",
                    (_interrupted(runner), now, job_id, runner),
                )
            for job_id, runner in dead_infer:
                c.execute(
                    "UPDATE inference_jobs SET state = 'Errored', error = ?, finished_at = ? "
                    "WHERE id = ? AND state IN ('Queued', 'Running') AND runner = ?",
                    (_interrupted(runner), now, job_id, runner),
                )
        return len(dead_train) + len(dead_infer)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel this instance's jobs and wait for their threads to record it."""
        self._closing.set()
        with self._lock:
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _guard(self, kind: str, job_id: int, target: Callable[[int], None]) -> None:
        try:
            target(job_id)
        except Exception as exc:  # never let a job thread die silently with its row still active
            self._fail(kind, job_id, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.unclaim(kind, job_id)
            self.db.release()

    def _fail(self, kind: str, job_id: int, error: str, state: str | None = None) -> None:
        table, active = ("training_jobs", TRAIN_ACTIVE) if kind == "training" else ("inference_jobs", INFER_ACTIVE)
        state = state or ("failed" if kind == "training" else "Errored")
        try:
            with self.db.write() as c:
                c.execute(
                    f"UPDATE {table} SET state = ?, error = ?, finished_at = ? WHERE id = ? AND state IN (?, ?)",
                    (state, error[:2000], time.time(), job_id, *active),
                )
        except Exception:  # the database is gone (service closed under us): the next open reaps the row
            pass

    # -- training ----------------------------------------------------------------------
    def _run_training(self, job_id: int) -> None:
        from reconciler.local.trainer import (
            InvalidImage,
            InvalidWeights,
            TrainingCanceled,
            TrainingError,
            TrainSample,
            train,
        )

        with self.db.write() as c:
            row = c.execute(
                "SELECT model_id, state, cancel, config, model_type, base, base_weights, save_name, config_digest, "
                "created_at FROM training_jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            if row is None or row[1] != "queued":
                return
            model_id, _, cancel, config_text, model_type, base, base_weights, save_name, cfg_digest, created = row
            if cancel or self._canceled("training", job_id):
                c.execute(
                    "UPDATE training_jobs SET state = 'canceled', error = 'canceled before it started', "
                    "finished_at = ? WHERE id = ?",
                    (time.time(), job_id),
                )
                return
            detection = c.execute("SELECT purpose FROM models WHERE id = ?", (model_id,)).fetchone()[0] == "detection"
            # The snapshot this run trains on: taken in the same transaction that starts it.
            rows = c.execute(
                "SELECT c.title, s.digest, s.boxes FROM samples s JOIN classes c ON c.id = s.class_id "
                "WHERE s.model_id = ? ORDER BY s.id",
                (model_id,),
            ).fetchall()
            c.execute("UPDATE training_jobs SET state = 'training', started_at = ? WHERE id = ?", (time.time(), job_id))

        config = json.loads(config_text)
        digest = dataset_digest((title, d) for title, d, _ in rows)
        try:
            blobs = self.blobs.get_many(d for _, d, _ in rows)
            samples = [
                # Boxes shape the run only for detection models; a classifier learns labels.
                TrainSample(label=title, data=data, boxes=tuple(json.loads(b)) if b and detection else ())
                for (title, _, b), data in zip(rows, blobs, strict=True)
            ]
            del blobs
            weights_in = self.blobs.get(base_weights) if base_weights else None
        except LocalError as exc:
            self._fail("training", job_id, f"stored data is missing: {exc}")
            return

        progress = _Progress(self, job_id)
        started = time.monotonic()
        try:
            # One class is allowed here because start_training only starts such a run when its
            # caller asked for it (LocalService.start_training's allow_one_class).
            result = train(samples, model_type=model_type, config=config, base_weights=weights_in,
                           progress=progress, allow_one_class=not detection)
        except TrainingCanceled:
            self._fail("training", job_id, "canceled" if not self._closing.is_set() else "canceled: service closed",
                       state="canceled")
            return
        except (TrainingError, InvalidImage, InvalidWeights) as exc:
            self._fail("training", job_id, str(exc) or type(exc).__name__)
            return
        del samples
        metrics = dict(result.metrics)
        metrics.setdefault("train_seconds", round(time.monotonic() - started, 3))
        weights_digest = self.blobs.put(result.weights)
        now = time.time()
        with self.db.write() as c:
            job = c.execute("SELECT state, cancel FROM training_jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None or job[0] != "training":
                return  # model deleted, or reaped: nothing to record
            if job[1] or self._canceled("training", job_id):
                c.execute(
                    "UPDATE training_jobs SET state = 'canceled', error = 'canceled', finished_at = ? WHERE id = ?",
                    (now, job_id),
                )
                return

            def taken(name: str) -> bool:
                q = "SELECT 1 FROM versions WHERE model_id = ? AND version = ?"
                return c.execute(q, (model_id, name)).fetchone() is not None

            name = version_name(taken, created)
            c.execute(
                "INSERT INTO versions (model_id, version, status, dataset_digest, config_digest, config, model_type, "
                "base, save_name, metrics, started_at, trained_at, error, num_samples, weights) "
                "VALUES (?, ?, 'trained', ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (model_id, name, digest, cfg_digest, config_text, model_type, base, save_name, to_json(metrics),
                 created, now, len(rows), weights_digest),
            )
            c.execute(
                "UPDATE training_jobs SET state = 'trained', progress = 1.0, version = ?, finished_at = ? "
                "WHERE id = ?",
                (name, now, job_id),
            )

    # -- inference ---------------------------------------------------------------------
    def predictor(self, model_id: int, version: str, weights: str) -> Any:
        """The loaded predictor of a version, from a small LRU cache."""
        from reconciler.local.trainer import load_predictor

        key = (model_id, version)
        with self._predictor_lock:
            if key in self._predictors:
                self._predictors.move_to_end(key)
                return self._predictors[key]
        loaded = load_predictor(self.blobs.get(weights))
        with self._predictor_lock:
            self._predictors[key] = loaded
            self._predictors.move_to_end(key)
            while len(self._predictors) > PREDICTOR_CACHE_SIZE:
                self._predictors.popitem(last=False)
        return loaded

    def _run_inference(self, job_id: int) -> None:
        from reconciler.local.trainer import InvalidImage

        with self.db.write() as c:
            row = c.execute(
                "SELECT i.model_id, i.version, i.state, i.inputs, i.options, v.weights FROM inference_jobs i "
                "LEFT JOIN versions v ON v.model_id = i.model_id AND v.version = i.version WHERE i.id = ?",
                (job_id,),
            ).fetchone()
            if row is None or row[2] != "Queued":
                return
            c.execute("UPDATE inference_jobs SET state = 'Running' WHERE id = ?", (job_id,))
        model_id, version, _, inputs_text, options_text, weights = row
        if weights is None:
            self._fail("inference", job_id, f"version {version} of model {model_id} no longer exists")
            return
        inputs: list[list[str]] = json.loads(inputs_text)
        options = json.loads(options_text)
        predictor = self.predictor(model_id, version, weights)
        results: list[dict] = []
        for start in range(0, len(inputs), INFER_CHUNK):
            if self._canceled("inference", job_id):
                self._fail("inference", job_id, "interrupted: service closed")
                return
            chunk = inputs[start : start + INFER_CHUNK]
            try:
                images = self.blobs.get_many(d for _, d in chunk)
                preds = predictor.predict(images, **options)
            except (InvalidImage, LocalError) as exc:
                self._fail("inference", job_id, f"inputs {start}..{start + len(chunk) - 1}: {exc}")
                return
            results.extend({"input": name, **p} for (name, _), p in zip(chunk, preds, strict=True))
            with self.db.write() as c:
                c.execute("UPDATE inference_jobs SET done = ? WHERE id = ? AND state = 'Running'",
                          (len(results), job_id))
        with self.db.write() as c:
            c.execute(
                "UPDATE inference_jobs SET state = 'Finished', done = ?, results = ?, finished_at = ? "
                "WHERE id = ? AND state = 'Running'",
                (len(results), to_json(results), time.time(), job_id),
            )


class _Progress:
    """The trainer's progress callback: throttled writes, and the stop signal."""

    def __init__(self, jobs: JobManager, job_id: int):
        self.jobs = jobs
        self.job_id = job_id
        self.last = 0.0

    def __call__(self, fraction: float) -> bool:
        if self.jobs._canceled("training", self.job_id):
            return False
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY:
            return True
        self.last = now
        fraction = min(1.0, max(0.0, float(fraction)))
        with self.jobs.db.write() as c:
            c.execute(
                "UPDATE training_jobs SET progress = ? WHERE id = ? AND state = 'training'", (fraction, self.job_id)
            )
            row = c.execute("SELECT cancel, state FROM training_jobs WHERE id = ?", (self.job_id,)).fetchone()
        # Stop when asked from another process, when the model was deleted, or when reaped.
        return row is not None and not row[0] and row[1] == "training"


def _interrupted(runner: str) -> str:
    pid = runner.partition(":")[0]
    return f"interrupted: the process that ran it (pid {pid}) is gone"
