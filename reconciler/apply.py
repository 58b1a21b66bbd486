"""Carry out a plan: phases in order, operations in parallel inside a phase.

Safety rules: a failure stops new work while running work finishes; the state
records intent before uploads (so anything that lands is known as managed even if
we die) and what landed after, saved in batches; every step is idempotent by uid,
so re-running after any interruption converges.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.model import Box, RemoteModel, RemoteSample, TrainRequest, UploadItem
from reconciler.plan import OP_ORDER, Operation, Plan, adopted_samples
from reconciler.providers.base import ProviderError
from reconciler.refresh import Refreshed
from reconciler.resolve import Resolved
from reconciler.sources import is_url
from reconciler.state import ModelState, State, encode_state, write_state
from reconciler.workspace import Workspace

SAVE_EVERY_SECONDS = 2.0
SAVE_EVERY_OPS = 2000
# A batch save waits at least this many times as long as the last one took, so that saving
# a large state (0.3 s of JSON at 100k samples, during which no worker runs Python) costs the
# apply at most ~5% of its time. Saving less often loses nothing: the intent recorded before
# the uploads and idempotent uids make a re-run converge whatever the last save held.
SAVE_PAUSE_FACTOR = 20


class Reporter:
    """Progress sink; the CLI provides a rich or plain implementation."""

    def phase(self, name: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def message(self, text: str) -> None: ...
    def done(self) -> None: ...


@dataclass
class ApplyResult:
    done: Counter = field(default_factory=Counter)
    failures: list[tuple[Operation, str]] = field(default_factory=list)
    skipped: int = 0
    versions: list[tuple[str, str]] = field(default_factory=list)  # (model, version)

    @property
    def ok(self) -> bool:
        return not self.failures


class SourceChanged(Exception):
    pass


def remember_lifecycle(state: State, spec: Any) -> bool:
    """Copy each declared model's prevent_destroy into the state, so a model later dropped from
    the spec stays protected (and an unprotected one can go). True when anything changed."""
    changed = False
    for key, mstate in state.models.items():
        model = spec.models.get(key)
        if model is not None and mstate.prevent_destroy != model.lifecycle.prevent_destroy:
            mstate.prevent_destroy = model.lifecycle.prevent_destroy
            changed = True
    return changed


def remember_adopted(
    state: State,
    resolved: Resolved | None,
    remotes: Mapping[str, RemoteModel | None],
    caps_by_provider: Mapping[str, frozenset[str]],
) -> bool:
    """Record in the state the remote samples the plan matched to declared ones although no uid
    linked them (a vendor without uids, and a lost state): from now on they are managed, so
    undeclaring one removes it. Call it once the apply is going ahead. True if anything changed."""
    if resolved is None:
        return False
    changed = False
    for key, desired in resolved.models.items():
        remote = remotes.get(key)
        mstate = state.models.get(key)
        if remote is None or (mstate is not None and mstate.remote_id != remote.remote_id):
            continue
        found = adopted_samples(desired, remote, mstate, caps_by_provider[desired.provider])
        if not found:
            continue
        if mstate is None:
            mstate = ModelState(desired.provider, desired.provider_type, desired.title, remote.remote_id)
            state.models[key] = mstate
        for uid, sample in found.items():
            digest = desired.samples[uid].digest
            mstate.samples[uid] = {"class": sample.class_name, "digest": digest, "remote_id": sample.remote_id}
        changed = True
    return changed


class Applier:
    def __init__(
        self,
        ws: Workspace,
        state: State,
        refreshed: Refreshed,
        *,
        parallelism: int = 10,
        reporter: Reporter | None = None,
        training_timeout: float = 3600.0,
    ):
        self.ws = ws
        self.state = state
        self.refreshed = refreshed
        self.parallelism = max(1, parallelism)
        self.reporter = reporter or Reporter()
        self.training_timeout = training_timeout
        self.result = ApplyResult()
        self._lock = threading.Lock()  # the state and the result
        self._save_lock = threading.Lock()  # one save at a time, written in the order encoded
        self._stop = threading.Event()
        self._unsaved = 0
        self._last_save = time.monotonic()
        self._save_seconds = 0.0  # what the last periodic save took
        self._remote_ids: dict[str, str] = {}
        for key in list(refreshed.remotes) + list(refreshed.orphans):
            rid = refreshed.remote_id(key)
            if rid:
                self._remote_ids[key] = rid
        from reconciler.fetch import UrlCache

        # Made here, not on first use: apply's workers would race to make one each (its HTTP
        # client is made only if a URL's bytes must be fetched again).
        self._url_cache = UrlCache(self.ws.project_dir / ".modelsync" / "cache" / "urls")

    # -- driver ------------------------------------------------------------------
    def run(self, plan: Plan) -> ApplyResult:
        by_phase: dict[str, list[Operation]] = {name: [] for name in OP_ORDER}
        for op in plan.operations:
            by_phase[op.op].append(op)
        try:
            for name in OP_ORDER:
                ops = by_phase[name]
                if not ops:
                    continue
                if self._stop.is_set():
                    self.result.skipped += len(ops)
                    continue
                if name == "upload_sample":
                    self._record_intent(ops)
                self.reporter.phase(name, len(ops))
                handler: Callable[[Operation], None] = getattr(self, f"_do_{name}")
                self._run_phase(handler, ops)
        finally:
            self._url_cache.close()  # the phases' pools are done: no fetch is running
            self._remember_lifecycle()
            self._save(force=True)
            self.reporter.done()
        return self.result

    def _remember_lifecycle(self) -> None:
        remember_lifecycle(self.state, self.ws.spec)

    def _run_phase(self, handler: Callable[[Operation], None], ops: list[Operation]) -> None:
        def task(op: Operation) -> None:
            if self._stop.is_set():
                with self._lock:
                    self.result.skipped += 1
                return
            try:
                handler(op)
            except (ProviderError, SourceChanged, OSError) as exc:
                self._fail(op, str(exc))
                return
            except Exception as exc:  # a bug must not lose the record of what landed
                self._fail(op, f"{type(exc).__name__}: {exc}")
                return
            with self._lock:
                self.result.done[op.op] += 1
            self.reporter.advance()
            self._save()

        if len(ops) == 1 or self.parallelism == 1:
            for op in ops:
                task(op)
            return
        # Workers pull from one iterator, so only `parallelism` operations are ever in hand:
        # Executor.map makes a future per operation up front, 182 MB for 100k uploads (measured
        # with tracemalloc). Waiting on futures, not Thread.join: on 3.11 a Ctrl-C that lands in
        # join() can mark a running thread finished, and the state was then saved before its
        # upload was recorded (test_ctrl_c_stops_apply_cleanly_and_a_rerun_converges).
        todo = iter(ops)
        take = threading.Lock()

        def work() -> None:
            while True:
                with take:
                    op = next(todo, None)
                if op is None:
                    return
                task(op)

        with ThreadPoolExecutor(max_workers=self.parallelism, thread_name_prefix="apply") as pool:
            workers = [pool.submit(work) for _ in range(min(self.parallelism, len(ops)))]
            try:
                for w in workers:
                    w.result()
            except BaseException:  # Ctrl-C: what is running finishes (the pool's exit waits), nothing new starts
                self._stop.set()
                raise

    def _fail(self, op: Operation, message: str) -> None:
        with self._lock:
            self.result.failures.append((op, message))
        self._stop.set()

    def _save(self, force: bool = False) -> None:
        """Save now (force) or when a batch is due. The state is encoded under the lock and
        written outside it: workers wait for the JSON, not for the disk."""
        with self._lock:
            self._unsaved += 1
            elapsed = time.monotonic() - self._last_save
            batch = self._unsaved >= SAVE_EVERY_OPS or elapsed >= SAVE_EVERY_SECONDS
            due = batch and elapsed >= SAVE_PAUSE_FACTOR * self._save_seconds
            if not (force or due):
                return
            self._unsaved = 0
            self._last_save = time.monotonic()
        started = time.monotonic()
        with self._save_lock:
            with self._lock:
                body = encode_state(self.state)
            write_state(self.ws.project_dir, body)
        if not force:
            self._save_seconds = time.monotonic() - started

    def _model_state(self, op: Operation) -> ModelState:
        mstate = self.state.models.get(op.model)
        if mstate is None:
            desired_provider = op.provider or self.ws.spec.provider_for(op.model)[0]
            mstate = ModelState(
                provider=desired_provider,
                provider_type=self.ws.spec.providers[desired_provider].type,
                title=op.title or self.ws.spec.models[op.model].title or op.model,
                remote_id=self._remote_ids[op.model],
            )
            self.state.models[op.model] = mstate
        return mstate

    def _provider(self, op: Operation):
        if op.model in self.ws.spec.models:
            return self.ws.provider_for_model(op.model)
        return self.ws.provider(op.provider or self.state.models[op.model].provider)

    # -- intent ------------------------------------------------------------------
    def _record_intent(self, ops: list[Operation]) -> None:
        """Before uploading, write which uids we are about to send: if we die mid-way, what
        landed is still known as ours (managed) on the next run."""
        with self._lock:
            for op in ops:
                if op.model not in self._remote_ids:
                    continue
                mstate = self._model_state(op)
                entry = mstate.samples.get(op.uid or "")
                if entry is None or entry.get("pending"):
                    mstate.samples[op.uid] = {"class": op.class_name, "digest": op.digest, "pending": True}
        self._save(force=True)

    # -- operations ----------------------------------------------------------------
    def _do_create_model(self, op: Operation) -> None:
        model = self.ws.spec.models[op.model]
        rid = self._provider(op).create_model(
            op.title or op.model, op.type or model.type, op.purpose or model.purpose, tuple(op.tags or ())
        )
        with self._lock:
            self._remote_ids[op.model] = rid
            self.state.models[op.model] = ModelState(
                provider=op.provider or self.ws.spec.provider_for(op.model)[0],
                provider_type=self.ws.spec.providers[op.provider or self.ws.spec.provider_for(op.model)[0]].type,
                title=op.title or op.model,
                remote_id=rid,
                prevent_destroy=model.lifecycle.prevent_destroy,
            )
        self._save(force=True)  # a created model must never be forgotten

    def _do_delete_model(self, op: Operation) -> None:
        self._provider(op).delete_model(op.remote_id or self._remote_ids[op.model])
        with self._lock:
            mstate = self.state.models.get(op.model)
            if mstate is not None and (op.remote_id is None or mstate.remote_id == op.remote_id):
                del self.state.models[op.model]
        self._save(force=True)

    def _do_delete_sample(self, op: Operation) -> None:
        sample = RemoteSample(remote_id=op.remote_id or "", uid=op.uid, class_name=op.class_name or "")
        self._provider(op).delete_sample(self._remote_ids[op.model], sample)
        with self._lock:
            mstate = self.state.models.get(op.model)
            if mstate is not None and op.uid in mstate.samples:
                entry = mstate.samples[op.uid]
                if entry.get("remote_id") in (None, op.remote_id) or entry.get("class") == op.class_name:
                    del mstate.samples[op.uid]

    def _do_delete_class(self, op: Operation) -> None:
        self._provider(op).delete_class(self._remote_ids[op.model], op.class_name or "", op.remote_id or "")
        with self._lock:
            mstate = self.state.models.get(op.model)
            if mstate is not None:
                for uid in [u for u, v in mstate.samples.items() if v.get("class") == op.class_name]:
                    del mstate.samples[uid]

    def _do_upload_sample(self, op: Operation) -> None:
        item = UploadItem(
            uid=op.uid or "",
            class_name=op.class_name or "",
            digest=op.digest or "",
            size=op.size or 0,
            filename=Path(op.source or "sample").name,
            read=lambda: self._read_source(op),
            url=op.source if op.source and is_url(op.source) else None,
            caption=op.caption,
            boxes=tuple(Box(**b) for b in (op.boxes or ())),
        )
        remote_sample_id = self._provider(op).upload_sample(self._remote_ids[op.model], item)
        with self._lock:
            mstate = self._model_state(op)
            entry: dict[str, Any] = {"class": op.class_name, "digest": op.digest}
            if remote_sample_id is not None:
                entry["remote_id"] = str(remote_sample_id)
            mstate.samples[op.uid or ""] = entry

    def _do_update_sample(self, op: Operation) -> None:
        sample = RemoteSample(remote_id=op.remote_id or "", uid=op.uid, class_name=op.class_name or "")
        boxes = tuple(Box(**b) for b in (op.boxes or ()))
        self._provider(op).update_sample(self._remote_ids[op.model], sample, op.caption, boxes)

    def _do_configure(self, op: Operation) -> None:
        self._provider(op).configure(self._remote_ids[op.model], dict(op.config or {}))

    def _do_train(self, op: Operation) -> None:
        provider = self._provider(op)
        remote_id = self._remote_ids[op.model]
        request = TrainRequest(
            model_type=op.model_type or "small",
            base=op.base,
            config=dict(op.config or {}),
            dataset_digest=op.dataset_digest or "",
            config_digest=op.config_digest or "",
            save_name=None,
        )
        handle = provider.start_training(remote_id, request)
        with self._lock:
            self._model_state(op).training_handle = handle
        self._save(force=True)
        self.reporter.message(f"training {op.model}…")
        deadline = time.monotonic() + self.training_timeout
        interval = getattr(provider, "poll_interval", 1.0)
        last_report = -1.0
        while True:
            status = provider.training_status(remote_id, handle)
            if status.done:
                break
            if status.progress is not None and status.progress - last_report >= 0.1:
                last_report = status.progress
                self.reporter.message(f"training {op.model}: {status.state} {status.progress:.0%}")
            if time.monotonic() > deadline:
                raise ProviderError(f"train {op.model}: no result after {self.training_timeout:.0f} s")
            time.sleep(interval)
        with self._lock:
            self._model_state(op).training_handle = None
        if status.state != "trained" or status.version is None:
            raise ProviderError(f"train {op.model}: {status.state}: {status.error or 'no version produced'}")
        v = status.version
        record = {
            "version": v.version,
            "dataset_digest": v.dataset_digest or op.dataset_digest,
            "config_digest": v.config_digest or op.config_digest,
            "config": dict(op.config or {}),
            "model_type": op.model_type,
            "base": op.base,
            "trained_at": v.trained_at,
            "metrics": v.metrics,
        }
        with self._lock:
            mstate = self._model_state(op)
            mstate.versions.insert(0, record)
            self.result.versions.append((op.model, v.version))

    # -- bytes ---------------------------------------------------------------------
    def _read_source(self, op: Operation) -> bytes:
        source = op.source or ""
        if is_url(source):
            return self._url_cache.read(source, op.digest or "")
        path = self.ws.project_dir / source
        data = path.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if op.digest and digest != op.digest:
            raise SourceChanged(f"{source}: changed since the plan was made; run plan again")
        return data
