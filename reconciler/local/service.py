"""The embedded training service: models, classes, samples, versions, jobs, sources.

Metadata lives in SQLite (``root/modelsync.db``), image bytes in a content-addressed
blob directory (``root/blobs``). Every call takes the ``owner`` it acts for; an id
that belongs to another owner is reported exactly like an absent one.

This package knows nothing of the reconciler: ``reconciler.providers.local`` and
``modelsync serve`` are its only clients, and both speak to it through this class.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.local import checks
from reconciler.local.blobs import INLINE_MAX, BlobStore, digest_of
from reconciler.local.db import Database
from reconciler.local.errors import ConflictError, InvalidInputError, NotFoundError, StateError, WouldWait
from reconciler.local.images import check_header, inspect_image
from reconciler.local.jobs import (
    INFERENCE_JOB_COLUMNS,
    TRAINING_JOB_COLUMNS,
    JobManager,
    config_digest,
    inference_job,
    process_token,
    to_json,
    training_job,
)
from reconciler.local.records import (
    ClassRecord,
    InferenceJob,
    ModelDetail,
    ModelRecord,
    SampleRecord,
    SourceRecord,
    TrainingJob,
    VersionRecord,
    gc_paused,
    group_by_class,
    sample_records,
)

UNSET: Any = object()  # "leave unchanged" for update_sample
# add_sample(wait=False) decodes at most this many pixels (512x512, ~1 ms here); a larger
# image is WouldWait, so a caller on an event loop never stalls it on a big decode.
NO_WAIT_DECODE_PIXELS = 512 * 512

_MODEL_SELECT = """
SELECT m.id, m.owner, m.title, m.type, m.purpose, m.tags, m.created_at,
  (SELECT count(*) FROM classes c WHERE c.model_id = m.id),
  (SELECT count(*) FROM samples s WHERE s.model_id = m.id),
  (SELECT total(s.size) FROM classes c JOIN samples s ON s.class_id = c.id WHERE c.model_id = m.id),
  v.version, v.trained_at,
  (SELECT j.state FROM training_jobs j WHERE j.model_id = m.id ORDER BY j.id DESC LIMIT 1),
  m.config
FROM models m
LEFT JOIN versions v ON v.id = (SELECT max(id) FROM versions WHERE model_id = m.id AND status = 'trained')
"""

_SAMPLE_SELECT = """
SELECT s.id, s.model_id, s.class_id, c.title, s.uid, s.digest, s.size, s.media_type, s.width, s.height,
  s.caption, s.boxes, s.created_at, s.source_url
FROM samples s JOIN classes c ON c.id = s.class_id
"""

_SAMPLE_COLUMNS_NO_TITLE = """
SELECT s.id, s.model_id, s.class_id, NULL, s.uid, s.digest, s.size, s.media_type, s.width, s.height,
  s.caption, s.boxes, s.created_at, s.source_url
FROM samples s
"""

_VERSION_SELECT = """
SELECT v.version, v.model_id, v.status, v.dataset_digest, v.config_digest, v.config, v.model_type, v.base,
  v.save_name, v.metrics, v.started_at, v.trained_at, v.error, v.num_samples
FROM versions v
"""

_SOURCE_SELECT = "SELECT id, owner, project, name, digest, size, created_at FROM sources"


def _model_record(row: tuple) -> ModelRecord:
    (mid, owner, title, kind, purpose, tags, created, ncls, nsamples, nbytes, version, trained_at, state,
     config) = row
    return ModelRecord(
        mid, owner, title, kind, purpose, tuple(json.loads(tags)), created, ncls, nsamples, int(nbytes),
        version is not None, version, trained_at, state, json.loads(config) if config else {},
    )


def _version_record(row: tuple) -> VersionRecord:
    version, mid, status, ds, cd, config, mtype, base, save, metrics, started, trained, error, n = row
    return VersionRecord(version, mid, status, ds, cd, json.loads(config), mtype, base, save, json.loads(metrics),
                         started, trained, error, n)


class LocalService:
    """Thread-safe; several processes may open the same ``root`` at once."""

    def __init__(self, root: Path | str, *, max_image_bytes: int = 20 * 2**20, inline_blob_max: int = INLINE_MAX):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_image_bytes = max_image_bytes
        self.db = Database(self.root / "modelsync.db")
        self.blobs = BlobStore(self.root / "blobs", self.db, inline_max=inline_blob_max)
        self.jobs = JobManager(self.db, self.blobs)
        self.jobs.reap()

    def close(self) -> None:
        """Stop this instance's jobs (recorded as canceled/Errored) and close the database."""
        self.jobs.close()
        self.db.close()

    def __enter__(self) -> LocalService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ helpers
    @staticmethod
    def _owner(owner: Any) -> str:
        return checks.text(owner, "owner", max_len=200)

    def _model_row(self, c: sqlite3.Connection, owner: str, model_id: Any) -> tuple:
        mid = checks.ident(model_id, "model_id")
        row = c.execute(_MODEL_SELECT + " WHERE m.id = ? AND m.owner = ?", (mid, owner)).fetchone()
        if row is None:
            raise NotFoundError(f"model {mid}: not found")
        return row

    @staticmethod
    def _check_model(c: sqlite3.Connection, owner: str, model_id: Any) -> tuple[int, str]:
        """(id, purpose) of an owner's model, or NotFoundError."""
        mid = checks.ident(model_id, "model_id")
        row = c.execute("SELECT id, purpose FROM models WHERE id = ? AND owner = ?", (mid, owner)).fetchone()
        if row is None:
            raise NotFoundError(f"model {mid}: not found")
        return row

    # ------------------------------------------------------------------------ models
    def create_model(
        self,
        owner: str,
        title: str,
        *,
        type: str = "vision",
        purpose: str = "classification",
        tags: Iterable[str] = (),
    ) -> ModelRecord:
        owner = self._owner(owner)
        checks.text(title, "title")
        checks.text(type, "type", max_len=64)
        checks.text(purpose, "purpose", max_len=64)
        tag_list = checks.tags(tags)
        now = time.time()
        with self.db.write() as c:
            cur = c.execute(
                "INSERT INTO models (owner, title, type, purpose, tags, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (owner, title, type, purpose, json.dumps(list(tag_list)), now),
            )
            model_id = cur.lastrowid
        return ModelRecord(model_id, owner, title, type, purpose, tag_list, now, 0, 0, 0, False, None, None, None, {})

    def list_models(self, owner: str) -> list[ModelRecord]:
        owner = self._owner(owner)
        with self.db.read() as c:
            rows = c.execute(_MODEL_SELECT + " WHERE m.owner = ? ORDER BY m.id", (owner,)).fetchall()
        return [_model_record(r) for r in rows]

    def get_model_record(self, owner: str, model_id: int) -> ModelRecord:
        """A model's summary (counts, latest version) without its samples."""
        owner = self._owner(owner)
        with self.db.read() as c:
            return _model_record(self._model_row(c, owner, model_id))

    def get_model(self, owner: str, model_id: int) -> ModelDetail:
        """One model with every class and sample: three queries in one snapshot.

        Samples are read in id order (one sequential pass over the table through the
        model_id index) and grouped by class here; that is several times faster at 100k
        samples than asking SQLite for class order, which revisits every page per class.
        """
        owner = self._owner(owner)
        with self.db.read() as c:
            model = _model_record(self._model_row(c, owner, model_id))
            classes = c.execute(
                "SELECT c.id, c.title, c.created_at, total(s.size) FROM classes c "
                "LEFT JOIN samples s ON s.class_id = c.id WHERE c.model_id = ? GROUP BY c.id ORDER BY c.id",
                (model.id,),
            ).fetchall()
            titles = {cid: title for cid, title, _, _ in classes}
            with gc_paused():  # records are built straight from the cursor, no list of rows in between
                cursor = c.execute(_SAMPLE_COLUMNS_NO_TITLE + " WHERE s.model_id = ? ORDER BY s.id", (model.id,))
                groups = group_by_class(sample_records(cursor, titles))
        out = tuple(
            ClassRecord(cid, model.id, title, created, int(nbytes), tuple(groups.get(cid, ())))
            for cid, title, created, nbytes in classes
        )
        return ModelDetail(model, out)

    def get_model_rows(self, owner: str, model_id: int) -> tuple[ModelRecord, list[tuple[int, str]], list[tuple]]:
        """A model as plain rows, for callers that convert samples to their own type.

        Returns ``(model, [(class_id, title)], samples)`` from one snapshot, each sample a
        tuple ``(id, uid, class_id, size, digest, caption, boxes, source_url)`` with
        ``boxes`` a JSON list or None. Skipping SampleRecords halves the cost at 100k samples.
        """
        owner = self._owner(owner)
        with self.db.read() as c:
            model = _model_record(self._model_row(c, owner, model_id))
            classes = c.execute("SELECT id, title FROM classes WHERE model_id = ? ORDER BY id", (model.id,)).fetchall()
            with gc_paused():
                rows = c.execute(
                    "SELECT id, uid, class_id, size, digest, caption, boxes, source_url FROM samples "
                    "WHERE model_id = ? ORDER BY id",
                    (model.id,),
                ).fetchall()
        return model, classes, rows

    def delete_model(self, owner: str, model_id: int) -> None:
        """Remove a model with its classes, samples, versions and jobs (a running training stops)."""
        owner = self._owner(owner)
        with self.db.write() as c:
            mid, _ = self._check_model(c, owner, model_id)
            active = [r[0] for r in c.execute(
                "SELECT id FROM training_jobs WHERE model_id = ? AND state IN ('queued', 'training')", (mid,)
            )]
            c.execute("DELETE FROM models WHERE id = ?", (mid,))
        for job_id in active:
            self.jobs.request_cancel("training", job_id)

    # ------------------------------------------------------------------------ samples and classes
    def add_sample(
        self,
        owner: str,
        model_id: int,
        class_title: str,
        data: bytes,
        *,
        uid: str | None = None,
        caption: str | None = None,
        boxes: Iterable[dict] = (),
        source_url: str | None = None,
        expected_digest: str | None = None,
        wait: bool = True,
    ) -> SampleRecord:
        """Store one sample; the class is created if missing.

        Idempotent by uid: the same uid with the same bytes and class returns the stored
        sample; the same uid with anything else is a ConflictError. ``expected_digest``
        (optional) refuses bytes that do not hash to it. ``wait=False``: WouldWait, with
        nothing stored, where the call would block (a busy database, a file blob, an image
        over NO_WAIT_DECODE_PIXELS); a short sample is stored in about a millisecond.
        """
        owner = self._owner(owner)
        checks.text(class_title, "class")
        uid = checks.text(uid, "uid", max_len=500, optional=True)
        caption = checks.caption(caption)
        box_list = checks.boxes(boxes)
        source_url = checks.text(source_url, "source_url", max_len=4000, optional=True)
        what = f"sample {uid!r}" if uid else "sample"
        if not wait and not self.blobs.inline(len(data)):
            raise WouldWait(f"{what}: {len(data):,} bytes go to a file blob")
        decode_now_max = None if wait else NO_WAIT_DECODE_PIXELS
        info = inspect_image(data, max_bytes=self.max_image_bytes, what=what, decode_now_max=decode_now_max)
        data = bytes(data)
        digest = digest_of(data)
        if expected_digest is not None and expected_digest != digest:
            raise InvalidInputError(f"{what}: content is {digest}, expected {expected_digest}")
        inline = self.blobs.inline(len(data))
        if not inline:
            self.blobs.put(data, digest)  # a file blob first: a committed row always finds its bytes
        with self.db.write(wait=wait) as c:
            mid, _ = self._check_model(c, owner, model_id)
            if uid is not None:
                row = c.execute(_SAMPLE_SELECT + " WHERE s.model_id = ? AND s.uid = ?", (mid, uid)).fetchone()
                if row is not None:
                    have = sample_records([row])[0]
                    if have.digest == digest and have.class_title == class_title:
                        return have
                    why = "other content" if have.digest != digest else f"class {have.class_title!r}"
                    raise ConflictError(f"sample uid {uid!r} already exists in model {mid} with {why}")
            now = time.time()
            found = c.execute("SELECT id FROM classes WHERE model_id = ? AND title = ?", (mid, class_title)).fetchone()
            if found is None:
                class_id = c.execute(
                    "INSERT INTO classes (model_id, title, created_at) VALUES (?, ?, ?)", (mid, class_title, now)
                ).lastrowid
            else:
                class_id = found[0]
            boxes_json = json.dumps(list(box_list)) if box_list else None
            if inline:
                self.blobs.put_in(c, data, digest)  # commits with the row
            sample_id = c.execute(
                "INSERT INTO samples (model_id, class_id, uid, digest, size, media_type, width, height, caption, "
                "boxes, created_at, source_url) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mid, class_id, uid, digest, len(data), info.media_type, info.width, info.height, caption,
                 boxes_json, now, source_url),
            ).lastrowid
        return SampleRecord(sample_id, mid, class_id, class_title, uid, digest, len(data), info.media_type,
                            info.width, info.height, caption, box_list, now, source_url)

    def get_sample(self, owner: str, sample_id: int) -> SampleRecord:
        owner = self._owner(owner)
        sid = checks.ident(sample_id, "sample_id")
        with self.db.read() as c:
            row = c.execute(
                _SAMPLE_SELECT + " JOIN models m ON m.id = s.model_id WHERE s.id = ? AND m.owner = ?", (sid, owner)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"sample {sid}: not found")
        return sample_records([row])[0]

    def get_sample_by_uid(self, owner: str, model_id: int, uid: str) -> SampleRecord:
        owner = self._owner(owner)
        checks.text(uid, "uid", max_len=500)
        with self.db.read() as c:
            mid, _ = self._check_model(c, owner, model_id)
            row = c.execute(_SAMPLE_SELECT + " WHERE s.model_id = ? AND s.uid = ?", (mid, uid)).fetchone()
        if row is None:
            raise NotFoundError(f"sample uid {uid!r} in model {mid}: not found")
        return sample_records([row])[0]

    def delete_sample(self, owner: str, sample_id: int) -> None:
        owner = self._owner(owner)
        sid = checks.ident(sample_id, "sample_id")
        with self.db.write() as c:
            n = c.execute(
                "DELETE FROM samples WHERE id = ? AND model_id IN (SELECT id FROM models WHERE owner = ?)", (sid, owner)
            ).rowcount
        if n == 0:
            raise NotFoundError(f"sample {sid}: not found")

    def delete_sample_by_uid(self, owner: str, uid: str, model_id: int | None = None) -> int:
        """Remove the samples with this uid (in one model, or in all of the owner's); return how many."""
        owner = self._owner(owner)
        checks.text(uid, "uid", max_len=500)
        with self.db.write() as c:
            if model_id is not None:
                mid, _ = self._check_model(c, owner, model_id)
                return c.execute("DELETE FROM samples WHERE model_id = ? AND uid = ?", (mid, uid)).rowcount
            return c.execute(
                "DELETE FROM samples WHERE uid = ? AND model_id IN (SELECT id FROM models WHERE owner = ?)",
                (uid, owner),
            ).rowcount

    def update_sample(self, owner: str, sample_id: int, *, caption: Any = UNSET, boxes: Any = UNSET) -> SampleRecord:
        """Change a sample's caption and/or boxes (omitted arguments stay as they are)."""
        owner = self._owner(owner)
        sid = checks.ident(sample_id, "sample_id")
        sets, params = [], []
        if caption is not UNSET:
            sets.append("caption = ?")
            params.append(checks.caption(caption))
        if boxes is not UNSET:
            box_list = checks.boxes(boxes)
            sets.append("boxes = ?")
            params.append(json.dumps(list(box_list)) if box_list else None)
        with self.db.write() as c:
            if sets:
                n = c.execute(
                    f"UPDATE samples SET {', '.join(sets)} WHERE id = ? "
                    "AND model_id IN (SELECT id FROM models WHERE owner = ?)",
                    (*params, sid, owner),
                ).rowcount
                if n == 0:
                    raise NotFoundError(f"sample {sid}: not found")
            return self.get_sample(owner, sid)

    def delete_class(self, owner: str, class_id: int) -> None:
        """Remove a class and all its samples."""
        owner = self._owner(owner)
        cid = checks.ident(class_id, "class_id")
        with self.db.write() as c:
            n = c.execute(
                "DELETE FROM classes WHERE id = ? AND model_id IN (SELECT id FROM models WHERE owner = ?)", (cid, owner)
            ).rowcount
        if n == 0:
            raise NotFoundError(f"class {cid}: not found")

    def read_blob(self, digest: str) -> bytes:
        return self.blobs.get(digest)

    def collect_garbage(self, *, older_than: float = 3600.0) -> int:
        """Remove blobs no row references (older than ``older_than`` s); return how many."""
        with self.db.read() as c:
            referenced = {r[0] for r in c.execute("SELECT DISTINCT digest FROM samples")}
            referenced |= {r[0] for r in c.execute("SELECT weights FROM versions WHERE weights IS NOT NULL")}
            referenced |= {r[0] for r in c.execute("SELECT digest FROM sources")}
            for (inputs,) in c.execute("SELECT inputs FROM inference_jobs WHERE state IN ('Queued', 'Running')"):
                referenced |= {d for _, d in json.loads(inputs)}
        return self.blobs.collect_garbage(referenced, older_than=older_than)

    # ------------------------------------------------------------------------ training
    def configure(self, owner: str, model_id: int, config: dict, *, checked: bool = True) -> None:
        """Store a training config; the next start_training without ``config`` uses it.

        ``checked=False`` stores a front end's own parameters as given (a JSON object whose keys
        need not be the trainer's); that front end then passes each run's config to start_training.
        """
        owner = self._owner(owner)
        clean = _checked_config(checks.config(config)) if checked else checks.config(config)
        with self.db.write() as c:
            mid, _ = self._check_model(c, owner, model_id)
            c.execute("UPDATE models SET config = ? WHERE id = ?", (to_json(clean), mid))

    def start_training(
        self,
        owner: str,
        model_id: int,
        *,
        config: dict | None = None,
        model_type: str = "small",
        base: str | None = None,
        save_name: str | None = None,
        config_digest: str | None = None,
        allow_one_class: bool = False,
    ) -> TrainingJob:
        """Queue a training run of the model's current samples, in a thread of this process.

        ``base`` fine-tunes from a version of this model or a ``save_name`` of this owner;
        ``save_name`` names the new version for later use as a base (Autogon's model names).
        ``allow_one_class``: a classification model whose samples are all in one class trains
        a one-class model (see the trainer) instead of being refused.
        """
        owner = self._owner(owner)
        checks.model_type(model_type)
        base = checks.text(base, "base", optional=True)
        save_name = checks.text(save_name, "save_name", optional=True)
        cfg = checks.config(config) if config is not None else None
        self.jobs.reap()
        job_id, started = None, False
        try:
            with self.db.write() as c:
                mid, purpose = self._check_model(c, owner, model_id)
                if c.execute(
                    "SELECT 1 FROM training_jobs WHERE model_id = ? AND state IN ('queued', 'training')", (mid,)
                ).fetchone():
                    raise ConflictError("Model is already training")
                if cfg is None:
                    stored = c.execute("SELECT config FROM models WHERE id = ?", (mid,)).fetchone()[0]
                    cfg = json.loads(stored) if stored else {}
                _checked_config(cfg)
                _check_trainable(c, mid, purpose, min_classes=1 if allow_one_class else 2)
                base_weights = self._resolve_base(c, owner, mid, base) if base else None
                digest = config_digest or _config_digest(model_type, base, cfg)
                job_id = c.execute(
                    "INSERT INTO training_jobs (model_id, state, config, config_digest, model_type, base, "
                    "base_weights, save_name, runner, created_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                    (mid, to_json(cfg), digest, model_type, base, base_weights, save_name, process_token(),
                     time.time()),
                ).lastrowid
                self.jobs.claim("training", job_id)  # before the commit: see JobManager.claim
            started = True
        finally:
            if job_id is not None and not started:
                self.jobs.unclaim("training", job_id)  # the commit failed
        self.jobs.launch("training", job_id)
        return TrainingJob(job_id, mid, "queued", 0.0, None, None)

    def _resolve_base(self, c: sqlite3.Connection, owner: str, model_id: int, base: str) -> str:
        """The weights blob of ``base``: a version of this model, else the newest save_name of the owner."""
        row = c.execute(
            "SELECT weights FROM versions WHERE model_id = ? AND version = ? AND status = 'trained'", (model_id, base)
        ).fetchone()
        if row is None:
            row = c.execute(
                "SELECT v.weights FROM versions v JOIN models m ON m.id = v.model_id "
                "WHERE m.owner = ? AND v.save_name = ? AND v.status = 'trained' ORDER BY v.id DESC LIMIT 1",
                (owner, base),
            ).fetchone()
        if row is None or row[0] is None:
            raise InvalidInputError(f"base: no version of model {model_id} and no saved model named {base!r}")
        return row[0]

    def get_training_job(self, owner: str, job_id: int) -> TrainingJob:
        owner = self._owner(owner)
        jid = checks.ident(job_id, "job_id")
        with self.db.read() as c:
            row = c.execute(
                f"SELECT {', '.join('j.' + x for x in TRAINING_JOB_COLUMNS.split(', '))} FROM training_jobs j "
                "JOIN models m ON m.id = j.model_id WHERE j.id = ? AND m.owner = ?",
                (jid, owner),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"training job {jid}: not found")
        job = training_job(row)
        if not job.done and self.jobs.reap():
            return self.get_training_job(owner, jid)
        return job

    def latest_training_job(self, owner: str, model_id: int) -> TrainingJob | None:
        owner = self._owner(owner)
        with self.db.read() as c:
            mid, _ = self._check_model(c, owner, model_id)
            row = c.execute(
                f"SELECT {TRAINING_JOB_COLUMNS} FROM training_jobs WHERE model_id = ? ORDER BY id DESC LIMIT 1", (mid,)
            ).fetchone()
        return training_job(row) if row else None

    def stop_training(self, owner: str, model_id: int) -> TrainingJob:
        """Ask the model's running training to stop; the model keeps its last good version.

        A queued job is canceled at once; a running one stops at its next progress
        report (wait_training shows when). StateError when nothing is running.
        """
        owner = self._owner(owner)
        with self.db.write() as c:
            mid, _ = self._check_model(c, owner, model_id)
            row = c.execute(
                "SELECT id, state FROM training_jobs WHERE model_id = ? AND state IN ('queued', 'training') "
                "ORDER BY id DESC LIMIT 1",
                (mid,),
            ).fetchone()
            if row is None:
                raise StateError(f"model {mid}: not training")
            job_id, state = row
            if state == "queued":
                c.execute(
                    "UPDATE training_jobs SET state = 'canceled', error = 'canceled before it started', "
                    "finished_at = ? WHERE id = ?",
                    (time.time(), job_id),
                )
            c.execute("UPDATE training_jobs SET cancel = 1 WHERE id = ?", (job_id,))
            job = training_job(
                c.execute(f"SELECT {TRAINING_JOB_COLUMNS} FROM training_jobs WHERE id = ?", (job_id,)).fetchone()
            )
        self.jobs.request_cancel("training", job_id)
        return job

    def wait_training(self, owner: str, job_id: int, timeout: float | None = None) -> TrainingJob:
        """Poll until the job is trained, failed or canceled; on timeout return it as it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            job = self.get_training_job(owner, job_id)
            if job.done or (deadline is not None and time.monotonic() >= deadline):
                return job
            time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.2)

    def list_versions(self, owner: str, model_id: int) -> list[VersionRecord]:
        """Trained versions, newest first."""
        owner = self._owner(owner)
        with self.db.read() as c:
            mid, _ = self._check_model(c, owner, model_id)
            rows = c.execute(_VERSION_SELECT + " WHERE v.model_id = ? ORDER BY v.id DESC", (mid,)).fetchall()
        return [_version_record(r) for r in rows]

    def resolve_version(self, owner: str, model_id: int, version: str | None = None) -> VersionRecord:
        """A version by name or save_name; None: the latest trained one (StateError if none)."""
        owner = self._owner(owner)
        with self.db.read() as c:
            mid, _ = self._check_model(c, owner, model_id)
            return self._resolve_version(c, mid, version)

    @staticmethod
    def _resolve_version(c: sqlite3.Connection, mid: int, version: str | None) -> VersionRecord:
        if version is None:
            row = c.execute(
                _VERSION_SELECT + " WHERE v.model_id = ? AND v.status = 'trained' ORDER BY v.id DESC LIMIT 1", (mid,)
            ).fetchone()
            if row is None:
                raise StateError(f"model {mid}: not trained yet")
            return _version_record(row)
        checks.text(version, "version")
        row = c.execute(
            _VERSION_SELECT + " WHERE v.model_id = ? AND v.status = 'trained' AND (v.version = ? OR v.save_name = ?) "
            "ORDER BY v.version = ? DESC, v.id DESC LIMIT 1",
            (mid, version, version, version),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"version {version!r} of model {mid}: not found")
        return _version_record(row)

    def find_version_by_save_name(self, owner: str, save_name: str) -> VersionRecord:
        """The newest trained version this owner saved under ``save_name``."""
        owner = self._owner(owner)
        checks.text(save_name, "save_name")
        with self.db.read() as c:
            row = c.execute(
                _VERSION_SELECT + " JOIN models m ON m.id = v.model_id WHERE m.owner = ? AND v.save_name = ? "
                "AND v.status = 'trained' ORDER BY v.id DESC LIMIT 1",
                (owner, save_name),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"saved model {save_name!r}: not found")
        return _version_record(row)

    # ------------------------------------------------------------------------ inference
    def _predictor_for(self, owner: str, model_id: int, version: str | None) -> tuple[VersionRecord, Any]:
        with self.db.read() as c:
            mid, _ = self._check_model(c, owner, model_id)
            rec = self._resolve_version(c, mid, version)
            weights = c.execute(
                "SELECT weights FROM versions WHERE model_id = ? AND version = ?", (mid, rec.version)
            ).fetchone()[0]
        return rec, self.jobs.predictor(mid, rec.version, weights)

    def _check_images(self, images: list[bytes], names: list[str] | None = None) -> None:
        if not images:
            raise InvalidInputError("images: at least one image is required")
        for i, data in enumerate(images):
            check_header(data, max_bytes=self.max_image_bytes, what=names[i] if names else f"images[{i}]")

    def predict(
        self,
        owner: str,
        model_id: int,
        images: list[bytes],
        *,
        version: str | None = None,
        confidence_thresh: float | None = None,
        overlap_thresh: float | None = None,
    ) -> list[dict]:
        """Run a trained version (default: the latest) on images; one dict per image."""
        from reconciler.local.trainer import InvalidImage

        owner = self._owner(owner)
        images = list(images)
        self._check_images(images)
        thresholds = _thresholds(confidence_thresh, overlap_thresh)
        _, predictor = self._predictor_for(owner, model_id, version)
        try:
            return predictor.predict(images, **thresholds)
        except InvalidImage as exc:
            raise InvalidInputError(f"images: {exc}") from None

    def start_inference(
        self,
        owner: str,
        model_id: int,
        inputs: list[tuple[str, bytes]],
        *,
        version: str | None = None,
        output_layer: str = "predictions",
        project: str | None = None,
        confidence_thresh: float | None = None,
        overlap_thresh: float | None = None,
    ) -> InferenceJob:
        """Queue a batch inference job (AnnoLab: Queued -> Running -> Finished | Errored)."""
        owner = self._owner(owner)
        inputs = list(inputs)
        names = [checks.text(name, f"inputs[{i}].name", max_len=1000) for i, (name, _) in enumerate(inputs)]
        self._check_images([data for _, data in inputs], names)
        checks.text(output_layer, "output_layer")
        project = checks.text(project, "project", optional=True)
        options = _thresholds(confidence_thresh, overlap_thresh)
        digests = [self.blobs.put(bytes(data)) for _, data in inputs]
        inputs_json = json.dumps([list(p) for p in zip(names, digests, strict=True)])
        job_id, started = None, False
        try:
            with self.db.write() as c:
                mid, _ = self._check_model(c, owner, model_id)
                rec = self._resolve_version(c, mid, version)
                job_id = c.execute(
                    "INSERT INTO inference_jobs (owner, model_id, version, state, total, inputs, options, "
                    "output_layer, project, runner, created_at) VALUES (?, ?, ?, 'Queued', ?, ?, ?, ?, ?, ?, ?)",
                    (owner, mid, rec.version, len(inputs), inputs_json, json.dumps(options), output_layer, project,
                     process_token(), time.time()),
                ).lastrowid
                self.jobs.claim("inference", job_id)  # before the commit: see JobManager.claim
            started = True
        finally:
            if job_id is not None and not started:
                self.jobs.unclaim("inference", job_id)  # the commit failed
        self.jobs.launch("inference", job_id)
        return InferenceJob(job_id, owner, mid, rec.version, "Queued", len(inputs), 0, (), None, output_layer, project)

    def get_inference_job(self, owner: str, job_id: int) -> InferenceJob:
        owner = self._owner(owner)
        jid = checks.ident(job_id, "job_id")
        with self.db.read() as c:
            row = c.execute(
                f"SELECT {INFERENCE_JOB_COLUMNS} FROM inference_jobs WHERE id = ? AND owner = ?", (jid, owner)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"inference job {jid}: not found")
        job = inference_job(row)
        if not job.finished and self.jobs.reap():
            return self.get_inference_job(owner, jid)
        return job

    def wait_inference(self, owner: str, job_id: int, timeout: float | None = None) -> InferenceJob:
        """Poll until Finished or Errored; on timeout return the job as it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            job = self.get_inference_job(owner, job_id)
            if job.finished or (deadline is not None and time.monotonic() >= deadline):
                return job
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    # ------------------------------------------------------------------------ sources
    def add_source(self, owner: str, project: str, name: str, data: bytes) -> SourceRecord:
        """Store a source file of a project (AnnoLab); any content, up to max_image_bytes."""
        owner = self._owner(owner)
        checks.text(project, "project")
        checks.text(name, "name", max_len=1000)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInputError(f"source {name!r}: expected bytes, got {type(data).__name__}")
        if len(data) == 0:
            raise InvalidInputError(f"source {name!r}: empty file")
        if len(data) > self.max_image_bytes:
            raise InvalidInputError(
                f"source {name!r}: {len(data):,} bytes is over the limit of {self.max_image_bytes:,} bytes"
            )
        digest = self.blobs.put(bytes(data))
        now = time.time()
        with self.db.write() as c:
            sid = c.execute(
                "INSERT INTO sources (owner, project, name, digest, size, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (owner, project, name, digest, len(data), now),
            ).lastrowid
        return SourceRecord(sid, owner, project, name, digest, len(data), now)

    def get_source(self, owner: str, source_id: int) -> SourceRecord:
        owner = self._owner(owner)
        sid = checks.ident(source_id, "source_id")
        with self.db.read() as c:
            row = c.execute(_SOURCE_SELECT + " WHERE id = ? AND owner = ?", (sid, owner)).fetchone()
        if row is None:
            raise NotFoundError(f"source {sid}: not found")
        return SourceRecord(*row)

    def list_sources(self, owner: str, project: str | None = None) -> list[SourceRecord]:
        owner = self._owner(owner)
        with self.db.read() as c:
            if project is None:
                rows = c.execute(_SOURCE_SELECT + " WHERE owner = ? ORDER BY id", (owner,)).fetchall()
            else:
                rows = c.execute(
                    _SOURCE_SELECT + " WHERE owner = ? AND project = ? ORDER BY id", (owner, project)
                ).fetchall()
        return [SourceRecord(*r) for r in rows]


def _check_trainable(c: sqlite3.Connection, model_id: int, purpose: str, *, min_classes: int = 2) -> None:
    if purpose == "detection":
        if not c.execute("SELECT 1 FROM samples WHERE model_id = ? AND boxes IS NOT NULL", (model_id,)).fetchone():
            raise StateError(f"model {model_id}: a detection model needs samples with boxes to train")
        return
    n = c.execute(
        "SELECT count(*) FROM classes c WHERE c.model_id = ? "
        "AND EXISTS (SELECT 1 FROM samples s WHERE s.class_id = c.id)",
        (model_id,),
    ).fetchone()[0]
    if n < min_classes:
        need = "two classes" if min_classes == 2 else "one class"
        raise StateError(f"model {model_id}: training needs samples in at least {need} (has {n})")


def _checked_config(config: dict) -> dict:
    """Refuse a bad training config now rather than as a failed job later."""
    from reconciler.local.trainer import TrainingError, parse_config

    try:
        parse_config(config)
    except TrainingError as exc:
        raise InvalidInputError(str(exc)) from None
    return config


def _config_digest(model_type: str, base: str | None, config: dict) -> str:
    return config_digest(model_type, base, config)


def _thresholds(confidence: float | None, overlap: float | None) -> dict[str, float]:
    out = {}
    for name, value in (("confidence_thresh", confidence), ("overlap_thresh", overlap)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise InvalidInputError(f"{name}: expected a number from 0 to 1, got {value!r}")
        out[name] = float(value)
    return out
