"""The embedded backend as a Provider: the only bridge between the reconciler and
``reconciler.local``. Everything runs in this process against the data directory
(``path:`` of the provider, relative to the spec, else ``.modelsync/local``), as
owner ``local``. Calls cost no network, so no rate limits apply."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from reconciler.local.errors import ConflictError, InvalidInputError, LocalError, NotFoundError, StateError
from reconciler.local.records import VersionRecord, gc_paused
from reconciler.model import (
    Box,
    ImageInput,
    InferenceStatus,
    ModelSummary,
    Prediction,
    RemoteModel,
    RemoteSample,
    TrainingStatus,
    TrainRequest,
    UploadItem,
    VersionInfo,
)
from reconciler.providers import base as caps
from reconciler.providers.base import NotFound, Provider, ProviderConfig, ProviderError

if TYPE_CHECKING:  # the service (sqlite, Pillow) is imported on first use only
    from reconciler.local.service import LocalService

OWNER = "local"
DEFAULT_DIR = Path(".modelsync") / "local"
DB_FILE = "modelsync.db"  # as LocalService names it (not imported: that module loads sqlite and Pillow)
T = TypeVar("T")


def data_dir(config: ProviderConfig) -> Path:
    """Where the provider keeps its data: ``path`` (relative to the spec's directory) or the default."""
    path = Path(config.path).expanduser() if config.path else DEFAULT_DIR
    return path if path.is_absolute() else Path(config.workdir) / path


def iso_utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def version_info(v: VersionRecord) -> VersionInfo:
    return VersionInfo(
        version=v.version,
        dataset_digest=v.dataset_digest,
        config_digest=v.config_digest,
        trained_at=iso_utc(v.trained_at),
        metrics=dict(v.metrics),
        status=v.status,
    )


def _boxes(raw: Any) -> tuple[Box, ...]:
    return tuple(
        Box(str(b.get("label")), float(b["x"]), float(b["y"]), float(b["w"]), float(b["h"]),
            None if b.get("confidence") is None else float(b["confidence"]))
        for b in raw or ()
    )


def _box_dicts(boxes: tuple[Box, ...]) -> list[dict]:
    return [{"label": b.label, "x": b.x, "y": b.y, "w": b.w, "h": b.h} for b in boxes]


def prediction(name: str, p: dict) -> Prediction:
    return Prediction(
        input=name,
        label=p.get("label"),
        confidence=float(p.get("confidence") or 0.0),
        boxes=_boxes(p.get("boxes")),
        scores={str(k): float(v) for k, v in (p.get("scores") or {}).items()},
    )


class LocalProvider(Provider):
    type = "local"
    jobs_outlive_the_process = False
    capabilities = frozenset(
        {
            caps.CAP_MODELS,
            caps.CAP_CLASSES,
            caps.CAP_DELETE_CLASS,
            caps.CAP_UPLOAD_BYTES,
            caps.CAP_UPLOAD_URLS,  # the reconciler fetches URL sources; we receive their bytes
            caps.CAP_DELETE_SAMPLE,
            caps.CAP_CAPTIONS,
            caps.CAP_BOXES,
            caps.CAP_CONFIGURE,
            caps.CAP_TRAIN,
            caps.CAP_MODEL_TYPE,
            caps.CAP_TRAIN_BASE,
            caps.CAP_STOP,
            caps.CAP_VERSIONS,
            caps.CAP_PREDICT,
            caps.CAP_INFER,
            caps.CAP_SAMPLE_UIDS,
        }
    )

    @classmethod
    def training_config_errors(cls, config: dict[str, Any]) -> list[tuple[str | None, str]]:
        from reconciler.local.trainer.config import config_problems

        out: list[tuple[str | None, str]] = []
        for problem in config_problems(config):  # all of them, not one per run
            where, _, message = problem.partition(": ")
            key = where.removeprefix("training.config.")
            out.append((key if key in config else None, message or problem))
        return out
    default_rate_limit = None
    default_total_rate_limit = None
    reads_locally = True
    poll_interval = 0.1  # seconds between status polls (apply and infer read it)

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        self.root = data_dir(config)
        self._service: LocalService | None = None
        self._open_lock = threading.Lock()
        self._stats_lock = threading.Lock()

    @property
    def service(self) -> LocalService:
        """Opened on first use, so that commands which never call the provider create nothing."""
        if self._service is None:
            with self._open_lock:
                if self._service is None:
                    from reconciler.local.service import LocalService

                    try:
                        self._service = LocalService(self.root)
                    except LocalError as exc:
                        raise ProviderError(f"open {self.root}: {exc}") from None
                    except OSError as exc:
                        raise ProviderError(f"open {self.root}: {exc.strerror or exc}") from None
        return self._service

    def _store_exists(self) -> bool:
        try:
            return (self.root / DB_FILE).exists()
        except OSError as exc:  # e.g. a name too long, or a directory it may not search
            raise ProviderError(f"open {self.root}: {exc.strerror or exc}") from None

    def close(self) -> None:
        with self._open_lock:
            if self._service is not None:
                self._service.close()
                self._service = None

    # -- plumbing ----------------------------------------------------------------------
    @contextmanager
    def _op(self, name: str) -> Iterator[None]:
        """Count the call, and turn service errors into one-line ProviderErrors naming ``name``."""
        with self._stats_lock:
            self.stats.requests += 1
            self.stats.by_endpoint[name] = self.stats.by_endpoint.get(name, 0) + 1
        try:
            yield
        except NotFoundError as exc:
            raise NotFound(f"{name}: {exc}", status=404) from None
        except (ConflictError, StateError) as exc:
            raise ProviderError(f"{name}: {exc}", status=409) from None
        except InvalidInputError as exc:
            raise ProviderError(f"{name}: {exc}", status=400) from None
        except LocalError as exc:
            raise ProviderError(f"{name}: {exc}") from None

    def _call(self, name: str, fn: Callable[[], T]) -> T:
        with self._op(name):
            return fn()

    @staticmethod
    def _id(value: str | int | None, what: str, op: str) -> int:
        text = str(value).strip() if value is not None else ""
        if not text.isascii() or not text.isdigit():
            raise NotFound(f"{op}: {what} {value!r}: not found", status=404)
        return int(text)

    # -- models ------------------------------------------------------------------------
    def list_models(self) -> list[ModelSummary]:
        if self._service is None and not self._store_exists():
            with self._op("list models"):  # no data directory yet: no models, and none is created
                return []
        models = self._call("list models", lambda: self.service.list_models(OWNER))
        return [ModelSummary(str(m.id), m.title, m.num_samples) for m in models]

    def view_model(self, remote_id: str) -> RemoteModel:
        mid = self._id(remote_id, "model", "view model")
        with self._op("view model"):
            m, classes, rows = self.service.get_model_rows(OWNER, mid)
            versions = self.service.list_versions(OWNER, mid)
        titles = dict(classes)
        loads = json.loads
        with gc_paused():  # 100k RemoteSamples: see gc_paused
            samples = [
                RemoteSample(str(sid), uid, titles[cid], size, digest, caption, _boxes(loads(bx)) if bx else (), url)
                for sid, uid, cid, size, digest, caption, bx, url in rows
            ]
        return RemoteModel(
            remote_id=str(m.id),
            title=m.title,
            type=m.type,
            purpose=m.purpose,
            tags=m.tags,
            classes={title: str(cid) for cid, title in classes},
            samples=samples,
            versions=[version_info(v) for v in versions],
            training_status=m.training_state,
            config=dict(m.config) if m.config else None,
        )

    def create_model(self, title: str, type: str, purpose: str, tags: tuple[str, ...]) -> str:
        rec = self._call(
            "create model", lambda: self.service.create_model(OWNER, title, type=type, purpose=purpose, tags=tags)
        )
        return str(rec.id)

    def delete_model(self, remote_id: str) -> None:
        mid = self._id(remote_id, "model", "delete model")
        self._call("delete model", lambda: self.service.delete_model(OWNER, mid))

    # -- samples and classes -------------------------------------------------------------
    def upload_sample(self, remote_id: str, item: UploadItem) -> str | None:
        mid = self._id(remote_id, "model", "upload sample")
        data = item.read()
        rec = self._call(
            "upload sample",
            lambda: self.service.add_sample(
                OWNER,
                mid,
                item.class_name,
                data,
                uid=item.uid or None,
                caption=item.caption,
                boxes=_box_dicts(item.boxes),
                source_url=item.url,
                expected_digest=item.digest or None,
            ),
        )
        return str(rec.id)

    def delete_sample(self, remote_id: str, sample: RemoteSample) -> None:
        """Idempotent: a sample that is already gone is not an error."""
        mid = self._id(remote_id, "model", "delete sample")
        with self._op("delete sample"):
            if sample.remote_id:
                sid = self._id(sample.remote_id, "sample", "delete sample")
                try:
                    found = self.service.get_sample(OWNER, sid)
                except NotFoundError:
                    self.service.get_model_record(OWNER, mid)  # the model itself must exist
                    return
                if found.model_id != mid:
                    raise NotFoundError(f"sample {sid} is not in model {mid}")
                self.service.delete_sample(OWNER, sid)
            elif sample.uid:
                self.service.delete_sample_by_uid(OWNER, sample.uid, mid)
            else:
                raise InvalidInputError("a sample needs a remote id or a uid to be deleted")

    def delete_class(self, remote_id: str, class_name: str, class_id: str) -> None:
        mid = self._id(remote_id, "model", "delete class")
        with self._op("delete class"):
            if not class_id:
                classes = {c.title: c.id for c in self.service.get_model(OWNER, mid).classes}
                if class_name not in classes:
                    return
                class_id = str(classes[class_name])
            try:
                self.service.delete_class(OWNER, self._id(class_id, "class", "delete class"))
            except NotFoundError:
                self.service.get_model_record(OWNER, mid)

    def update_sample(self, remote_id: str, sample: RemoteSample, caption: str | None, boxes: tuple) -> None:
        mid = self._id(remote_id, "model", "update sample")
        with self._op("update sample"):
            if sample.remote_id:
                sid = self._id(sample.remote_id, "sample", "update sample")
            elif sample.uid:
                sid = self.service.get_sample_by_uid(OWNER, mid, sample.uid).id
            else:
                raise InvalidInputError("a sample needs a remote id or a uid to be updated")
            box_dicts = [b.to_json() if isinstance(b, Box) else dict(b) for b in boxes or ()]
            for b in box_dicts:
                b.pop("confidence", None)
            self.service.update_sample(OWNER, sid, caption=caption, boxes=box_dicts)

    # -- training ----------------------------------------------------------------------
    def configure(self, remote_id: str, config: dict[str, Any]) -> None:
        mid = self._id(remote_id, "model", "configure")
        self._call("configure", lambda: self.service.configure(OWNER, mid, config))

    def start_training(self, remote_id: str, request: TrainRequest) -> str:
        mid = self._id(remote_id, "model", "start training")
        job = self._call(
            "start training",
            lambda: self.service.start_training(
                OWNER,
                mid,
                config=dict(request.config),
                model_type=request.model_type,
                base=request.base,
                save_name=request.save_name,
                config_digest=request.config_digest or None,
            ),
        )
        return str(job.id)

    def training_status(self, remote_id: str, handle: str) -> TrainingStatus:
        mid = self._id(remote_id, "model", "training status")
        jid = self._id(handle, "training job", "training status")
        with self._op("training status"):
            job = self.service.get_training_job(OWNER, jid)
            if job.model_id != mid:
                raise NotFoundError(f"training job {jid} is not a job of model {mid}")
            version = None
            if job.state == "trained" and job.version:
                version = version_info(self.service.resolve_version(OWNER, mid, job.version))
        return TrainingStatus(state=job.state, progress=job.progress, version=version, error=job.error)

    def stop_training(self, remote_id: str, handle: str | None) -> None:
        """Idempotent: stopping a model that is not training does nothing."""
        mid = self._id(remote_id, "model", "stop training")
        with self._op("stop training"), suppress(StateError):
            self.service.stop_training(OWNER, mid)

    def list_versions(self, remote_id: str) -> list[VersionInfo]:
        mid = self._id(remote_id, "model", "list versions")
        versions = self._call("list versions", lambda: self.service.list_versions(OWNER, mid))
        return [version_info(v) for v in versions]

    # -- inference ---------------------------------------------------------------------
    def _image_bytes(self, images: list[ImageInput], op: str) -> list[tuple[str, bytes]]:
        out = []
        for img in images:
            data = img.data
            if data is None and img.url:
                data = _fetch(img.url, op)
            if data is None:
                raise ProviderError(f"{op}: input {img.name!r} has no image data")
            out.append((img.name, data))
        return out

    def predict(
        self,
        remote_id: str,
        version: str | None,
        images: list[ImageInput],
        *,
        confidence_thresh: float | None = None,
        overlap_thresh: float | None = None,
    ) -> list[Prediction]:
        mid = self._id(remote_id, "model", "predict")
        named = self._image_bytes(images, "predict")
        preds = self._call(
            "predict",
            lambda: self.service.predict(
                OWNER,
                mid,
                [data for _, data in named],
                version=version,
                confidence_thresh=confidence_thresh,
                overlap_thresh=overlap_thresh,
            ),
        )
        return [prediction(name, p) for (name, _), p in zip(named, preds, strict=True)]

    def start_inference(self, remote_id: str, version: str | None, images: list[ImageInput]) -> str:
        mid = self._id(remote_id, "model", "start inference")
        named = self._image_bytes(images, "start inference")
        job = self._call("start inference", lambda: self.service.start_inference(OWNER, mid, named, version=version))
        return str(job.id)

    def inference_status(self, job_id: str) -> InferenceStatus:
        jid = self._id(job_id, "inference job", "inference status")
        job = self._call("inference status", lambda: self.service.get_inference_job(OWNER, jid))
        return InferenceStatus(
            job_id=str(job.id),
            state=job.state,
            done=job.done,
            total=job.total,
            results=tuple(prediction(str(r.get("input")), r) for r in job.results),
            error=job.error,
        )


def _fetch(url: str, op: str) -> bytes:
    from reconciler.fetch import FetchError, fetch_url

    try:
        return fetch_url(url)
    except FetchError as exc:
        raise ProviderError(f"{op}: cannot fetch {exc}") from None
