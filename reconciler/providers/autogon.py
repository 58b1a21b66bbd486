"""Autogon LabelCraft: object-detection projects fed with image URLs (api.autogon.ai/api/v1/label/).

What the API makes hard, and how this provider copes:

* images are added by URL only and Autogon keeps no uid: a remote image is reported with
  ``uid=None`` and its URL; the reconciler maps it to a uid through the image id this
  provider returns from ``upload_sample`` (recorded in the state).
* adding an image is not idempotent: after a lost answer the project's images are read
  to see whether the URL landed (in the same class) before sending it again.
* training answers only when it is over (201 with the metrics), so the call gets a long
  timeout of its own; a trained model is named by ``model_save_name``, and that name is
  the version modelsync records, predicts with, and retrains from (``training.base``).
* projects and their saved models are read through the project endpoints `modelsync
  serve` documents in docs/WIRE.md (Autogon's public docs do not cover them).
* the documented upload takes ``images`` as a list of URLs, with no field for a class:
  each image goes as ``{url, lbl, annotations}`` instead, an extension `modelsync serve`
  accepts (docs/WIRE.md), unverified against the real service.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from typing import Any

from reconciler.model import (
    Box,
    ImageInput,
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
from reconciler.providers.base import NotFound, NotSupported, Provider, ProviderConfig, ProviderError
from reconciler.providers.datauri import data_uri
from reconciler.providers.http import HttpClient, error_text
from reconciler.sources import is_url

BASE_URL = "https://api.autogon.ai"
LABEL = "/api/v1/label"
PROJECTS = LABEL + "/project/"
IMAGES = LABEL + "/image/"
ANNOTATIONS = LABEL + "/annotation/"
TRAIN = LABEL + "/model/train/"
PREDICT = LABEL + "/model/predict/"
PREDICT_BATCH = 16  # images per predict call (data: URIs make bodies large)
UNLABELED = "unlabeled"



def _box(a: dict[str, Any], default_label: str = "") -> Box | None:
    bbx = a.get("bbx")
    if not isinstance(bbx, dict):
        return None
    try:
        return Box(
            label=str(a.get("lbl") or default_label),
            x=float(bbx["x"]),
            y=float(bbx["y"]),
            w=float(bbx["w"]),
            h=float(bbx["h"]),
            confidence=float(a["conf"]) if a.get("conf") is not None else None,
        )
    except (KeyError, TypeError, ValueError):
        return None


def annotation_json(box: Box, default_label: str) -> dict[str, Any]:
    return {"lbl": box.label or default_label, "bbx": {"x": box.x, "y": box.y, "w": box.w, "h": box.h}}


def prediction_from(name: str, entries: list[dict[str, Any]]) -> Prediction:
    """Autogon's [{lbl, conf, bbx}] for one image -> a Prediction (label: the most confident)."""
    boxes = tuple(b for b in (_box(e) for e in entries if isinstance(e, dict)) if b is not None)
    best = max((e for e in entries if isinstance(e, dict)), key=lambda e: float(e.get("conf") or 0.0), default=None)
    if best is None:
        return Prediction(input=name, label=None, confidence=0.0, boxes=boxes)
    return Prediction(input=name, label=str(best.get("lbl")), confidence=float(best.get("conf") or 0.0), boxes=boxes)


def version_of(m: dict[str, Any]) -> VersionInfo:
    return VersionInfo(
        version=str(m.get("model_name") or m.get("model_version")),
        dataset_digest=m.get("dataset_digest") or None,
        config_digest=m.get("config_digest") or None,
        trained_at=m.get("trained_at") or None,
        metrics=m.get("metrics") or {},
        status=str(m.get("status") or "trained"),
    )


class AutogonProvider(Provider):
    type = "autogon"
    capabilities = frozenset(
        {
            caps.CAP_MODELS,
            caps.CAP_CLASSES,
            caps.CAP_UPLOAD_URLS,
            caps.CAP_DELETE_SAMPLE,
            caps.CAP_BOXES,
            caps.CAP_TRAIN,
            caps.CAP_MODEL_TYPE,
            caps.CAP_TRAIN_BASE,
            caps.CAP_PREDICT,
        }
    )
    default_rate_limit = None  # Autogon documents no limit
    default_total_rate_limit = None
    poll_interval = 1.0

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        if not config.api_key:
            raise ProviderError(f"{config.name}: autogon needs api_key (e.g. api_key: ${{env:AUTOGON_API_KEY}})")
        self._key = config.api_key
        opts = config.options or {}
        base = (config.base_url or BASE_URL).rstrip("/")
        common = dict(
            vendor="autogon",
            headers={"X-AUG-KEY": self._key},
            max_retries=int(opts.get("max_retries", 5)),
            backoff_base=float(opts.get("backoff_base", 0.5)),
            stats=self.stats,
            secrets=(self._key,),
        )
        per_endpoint, total = self.rate_limits()
        self.http = HttpClient(
            base,
            rate_limit=per_endpoint,
            total_rate_limit=total,
            timeout=float(opts.get("timeout", 30.0)),
            **common,
        )
        # Training answers when it is over: its own client with a long timeout, same pacing.
        self.train_http = HttpClient(
            base, timeout=float(opts.get("train_timeout", 3600.0)), limiter=self.http.limiter, **common
        )
        self._trained: dict[str, VersionInfo] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()
        self.train_http.close()

    # -- plumbing ------------------------------------------------------------------
    def _json(self, method: str, path: str, operation: str, **kw: Any) -> Any:
        """A call whose answer is Autogon's envelope; returns ``data`` (None when landed() said so)."""
        body = self.http.json(method, path, operation=operation, **kw)
        if body is None:
            return None
        if not isinstance(body, dict):
            raise ProviderError(f"autogon {operation}: answer is not a JSON object")
        if body.get("status") is False:
            raise ProviderError(self.http.scrub(f"autogon {operation}: {body.get('message') or 'error'}"))
        return body.get("data")

    @staticmethod
    def _pid(remote_id: str) -> int:
        try:
            return int(remote_id)
        except (TypeError, ValueError):
            raise ProviderError(f"autogon: project ids are numbers, got {remote_id!r}") from None

    def _project(self, remote_id: str) -> dict[str, Any]:
        data = self._json("GET", f"{PROJECTS}{self._pid(remote_id)}/", "view project")
        if not isinstance(data, dict):
            raise ProviderError(f"autogon view project: no project in the answer for {remote_id}")
        return data

    def _images(self, remote_id: str) -> list[dict[str, Any]]:
        data = self._json("GET", IMAGES, "list images", params={"project_id": self._pid(remote_id)})
        return [d for d in data or [] if isinstance(d, dict)]

    def _projects(self) -> list[dict[str, Any]]:
        return [d for d in self._json("GET", PROJECTS, "list projects") or [] if isinstance(d, dict)]

    # -- models --------------------------------------------------------------------
    def list_models(self) -> list[ModelSummary]:
        return [
            ModelSummary(remote_id=str(p.get("id")), title=str(p.get("name", "")), num_samples=p.get("num_images"))
            for p in self._projects()
        ]

    def view_model(self, remote_id: str) -> RemoteModel:
        data = self._project(remote_id)
        samples = []
        for img in data.get("images") or []:
            lbl = str(img.get("lbl") or UNLABELED)
            boxes = tuple(b for b in (_box(a, lbl) for a in img.get("annotations") or []) if b is not None)
            samples.append(
                RemoteSample(
                    remote_id=str(img.get("image_id")),
                    uid=None,
                    class_name=lbl,
                    size=img.get("size"),
                    digest=img.get("digest") or None,
                    boxes=boxes,
                    url=img.get("image_url") or None,
                )
            )
        classes = {str(c): "" for c in data.get("classes") or []} or {s.class_name: "" for s in samples}
        training = data.get("training") or {}
        state = training.get("state")
        return RemoteModel(
            remote_id=str(data.get("id", remote_id)),
            title=str(data.get("name", "")),
            type=data.get("type"),
            purpose=data.get("purpose"),
            tags=tuple(str(t) for t in data.get("tags") or ()),
            classes=classes,
            samples=samples,
            versions=self._versions(data),
            training_status=state if state in ("queued", "training") else None,
        )

    @staticmethod
    def _versions(project: dict[str, Any]) -> list[VersionInfo]:
        return [version_of(m) for m in project.get("models") or [] if m.get("status") == "trained"]

    def create_model(self, title: str, type: str, purpose: str, tags: tuple[str, ...]) -> str:
        before = {str(p.get("id")) for p in self._projects() if p.get("name") == title}

        def new_ids() -> list[str]:
            ids = (str(p.get("id")) for p in self._projects() if p.get("name") == title)
            return [i for i in ids if i not in before]

        body = {"name": title, "type": type, "purpose": purpose, "tags": list(tags)}
        data = self._json("POST", PROJECTS, "create project", json=body, landed=lambda: bool(new_ids()))
        if isinstance(data, dict) and data.get("id") is not None:
            return str(data["id"])
        found = new_ids()
        if len(found) != 1:
            raise ProviderError(f"autogon create project: expected one new project named {title!r}, found "
                                f"{', '.join(found) or 'none'}")
        return found[0]

    def delete_model(self, remote_id: str) -> None:
        with contextlib.suppress(NotFound):
            self._json("DELETE", f"{PROJECTS}{self._pid(remote_id)}/", "delete project")

    # -- samples -------------------------------------------------------------------
    def _find_image(self, remote_id: str, item: UploadItem) -> str | None:
        for img in self._images(remote_id):
            if img.get("image_url") == item.url and (img.get("lbl") or UNLABELED) == item.class_name:
                return str(img.get("image_id"))
        return None

    def upload_sample(self, remote_id: str, item: UploadItem) -> str | None:
        if not is_url(item.url):
            raise NotSupported(f"autogon: {item.filename}: Autogon adds images by http(s) URL only")
        image = {
            "url": item.url,
            "lbl": item.class_name,
            "annotations": [annotation_json(b, item.class_name) for b in item.boxes],
        }
        body = {"project_id": self._pid(remote_id), "images": [image]}
        landed = lambda: self._find_image(remote_id, item) is not None  # noqa: E731
        data = self._json("POST", IMAGES, f"upload {item.uid}", json=body, landed=landed)
        if data is None:
            return self._find_image(remote_id, item)
        if isinstance(data, list) and data and isinstance(data[0], dict) and data[0].get("image_id") is not None:
            return str(data[0]["image_id"])
        return self._find_image(remote_id, item)

    def delete_sample(self, remote_id: str, sample: RemoteSample) -> None:
        if not sample.remote_id:
            raise ProviderError(f"autogon delete image: {sample.uid or 'sample'} has no image id")
        body = {"project_id": self._pid(remote_id), "images": [self._pid(sample.remote_id)]}
        with contextlib.suppress(NotFound):  # already gone: what we wanted
            self._json("DELETE", IMAGES, f"delete image {sample.remote_id}", json=body)

    def update_sample(self, remote_id: str, sample: RemoteSample, caption: str | None, boxes: tuple) -> None:
        if caption:
            raise NotSupported("autogon: images have no caption")
        body = {
            "project_id": self._pid(remote_id),
            "image_id": self._pid(sample.remote_id),
            "annotations": [annotation_json(b, sample.class_name) for b in boxes],
        }
        self._json("POST", ANNOTATIONS, f"annotate image {sample.remote_id}", json=body)

    # -- training ------------------------------------------------------------------
    def _save_name(self, remote_id: str, offset: int = 0) -> str:
        """A model name unique to this project and second: ``YYYYMMDD_HHMMSS_p<project>``."""
        now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
        return f"{now:%Y%m%d_%H%M%S}_p{self._pid(remote_id)}"

    def _saved(self, remote_id: str, name: str) -> dict[str, Any] | None:
        for m in self._project(remote_id).get("models") or []:
            if m.get("model_name") == name:
                return m
        return None

    def start_training(self, remote_id: str, request: TrainRequest) -> str:
        def landed() -> bool:
            project = self._project(remote_id)
            running = (project.get("training") or {}).get("state") in ("queued", "training")
            return running or any(m.get("model_name") == name for m in project.get("models") or [])

        for offset in range(5):
            name = request.save_name or self._save_name(remote_id, offset)
            body = {
                "model_type": request.model_type,
                "project_id": self._pid(remote_id),
                "model_load_name": request.base,
                "model_save_name": name,
            }
            resp = self.train_http.request(
                "POST", TRAIN, json=body, operation="train", landed=landed, raise_for_status=False
            )
            if resp is None:
                return name
            if resp.status_code == 409 and "already exists" in error_text(resp) and request.save_name is None:
                continue  # the name is taken (a second run within the second): the next one
            if resp.status_code >= 400:
                raise self.train_http.error("train", error_text(resp), resp.status_code)
            data = (resp.json() or {}).get("data") or {}
            if resp.status_code == 201 and data.get("status") == "trained":
                with self._lock:
                    self._trained[name] = version_of(data)
            return name
        raise ProviderError(f"autogon train: no free model name for project {remote_id}")

    def training_status(self, remote_id: str, handle: str) -> TrainingStatus:
        with self._lock:
            done = self._trained.get(handle)
        if done is not None:
            return TrainingStatus("trained", 1.0, done)
        project = self._project(remote_id)
        for m in project.get("models") or []:
            if m.get("model_name") == handle and m.get("status") == "trained":
                return TrainingStatus("trained", 1.0, version_of(m))
        training = project.get("training") or {}
        state = training.get("state")
        if state in ("queued", "training"):
            return TrainingStatus(state, training.get("progress"))
        if state in ("failed", "canceled"):
            return TrainingStatus(state, None, None, training.get("error") or f"training {state}")
        return TrainingStatus("failed", None, None, f"no model named {handle!r} in project {remote_id}")

    def list_versions(self, remote_id: str) -> list[VersionInfo]:
        return self._versions(self._project(remote_id))

    # -- inference -----------------------------------------------------------------
    def predict(
        self,
        remote_id: str,
        version: str | None,
        images: list[ImageInput],
        *,
        confidence_thresh: float | None = None,
        overlap_thresh: float | None = None,
    ) -> list[Prediction]:
        if version is None:
            versions = self.list_versions(remote_id)
            if not versions:
                raise ProviderError(f"autogon predict: project {remote_id} has no trained model yet")
            version = versions[0].version
        out: list[Prediction] = []
        for start in range(0, len(images), PREDICT_BATCH):
            chunk = images[start : start + PREDICT_BATCH]
            keys = []
            for image in chunk:
                if is_url(image.url):
                    keys.append(str(image.url))  # Autogon's documented input: the vendor fetches it
                elif image.data is not None:
                    keys.append(data_uri(image.data))  # local files: a data: URI (modelsync serve takes them)
                else:
                    raise ProviderError(f"autogon predict: {image.name}: no data and no http(s) URL")
            body: dict[str, Any] = {"app_id": self._pid(remote_id), "image_urls": keys, "model_name": version}
            if confidence_thresh is not None:
                body["confidence_thresh"] = confidence_thresh
            if overlap_thresh is not None:
                body["overlap_thresh"] = overlap_thresh
            answer = self.http.json("POST", PREDICT, operation="predict", json=body) or {}
            if answer.get("status") is False:
                raise ProviderError(self.http.scrub(f"autogon predict: {answer.get('message') or 'error'}"))
            annotations = answer.get("annotations") or {}
            for image, key in zip(chunk, keys, strict=True):
                out.append(prediction_from(image.name, list(annotations.get(key) or [])))
        return out
