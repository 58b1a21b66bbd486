"""AnnoLab: asynchronous batch inference on source files (api.annolab.ai/v1/infer/batch).

AnnoLab models are built and trained in AnnoLab; modelsync does not create, feed or train
them. A spec model on an ``annolab`` provider names an existing AnnoLab model by its
title, and ``modelsync infer MODEL --sources ...`` runs it: each input is uploaded as a
source of the provider's ``project`` (created if missing), a batch job writes the
predictions into ``output_layer``, the job is polled until Finished or Errored, and the
predictions are read back from that layer. Everything besides the two documented
inference endpoints uses the extensions `modelsync serve` documents in docs/WIRE.md.

Provider options: ``group_name`` (the AnnoLab group), ``project`` (default "modelsync"),
``output_layer`` (default "modelsync-predictions").
"""

from __future__ import annotations

import threading
import urllib.parse
from typing import Any

from reconciler.model import (
    Box,
    ImageInput,
    InferenceStatus,
    ModelSummary,
    Prediction,
    RemoteModel,
    RemoteSample,
    VersionInfo,
)
from reconciler.providers import base as caps
from reconciler.providers.base import NotFound, NotSupported, Provider, ProviderConfig, ProviderError
from reconciler.providers.datauri import data_uri
from reconciler.providers.http import HttpClient

BASE_URL = "https://api.annolab.ai"
DEFAULT_PROJECT = "modelsync"
DEFAULT_LAYER = "modelsync-predictions"
NOT_HERE = "annolab: models are created, fed and trained in AnnoLab; modelsync only runs inference on them"


def predictions_from(annotations: list[dict[str, Any]], order: list[int], names: dict[int, str]) -> list[Prediction]:
    """Layer annotations -> one Prediction per source (in ``order``), most confident label first."""
    by_source: dict[int, list[dict[str, Any]]] = {sid: [] for sid in order}
    for a in annotations:
        sid = a.get("sourceId")
        if isinstance(sid, int) and sid in by_source:
            by_source[sid].append(a)
    out = []
    for sid in order:
        found = by_source[sid]
        boxes = tuple(
            Box(label=str(a.get("type") or a.get("value")), x=float(b[0]), y=float(b[1]), w=float(b[2]),
                h=float(b[3]), confidence=float(a["confidence"]) if a.get("confidence") is not None else None)
            for a in found
            if isinstance(b := a.get("bbox"), list) and len(b) == 4
        )
        best = max(found, key=lambda a: float(a.get("confidence") or 0.0), default=None)
        name = names.get(sid) or (best or {}).get("sourceName") or str(sid)
        if best is None:
            out.append(Prediction(input=name, label=None, confidence=0.0))
            continue
        scores = {str(k): float(v) for k, v in (best.get("scores") or {}).items()}
        out.append(
            Prediction(
                input=name,
                label=str(best.get("value") or best.get("type")),
                confidence=float(best.get("confidence") or 0.0),
                boxes=boxes,
                scores=scores,
            )
        )
    return out


class AnnoLabProvider(Provider):
    type = "annolab"
    capabilities = frozenset({caps.CAP_INFER})
    default_rate_limit = None  # AnnoLab documents no limit
    default_total_rate_limit = None
    poll_interval = 1.0

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        if not config.api_key:
            raise ProviderError(f"{config.name}: annolab needs api_key (e.g. api_key: ${{env:ANNOLAB_API_KEY}})")
        self._key = config.api_key
        opts = config.options or {}
        self.group = str(opts.get("group_name") or "")
        self.project = str(opts.get("project") or DEFAULT_PROJECT)
        self.layer = str(opts.get("output_layer") or DEFAULT_LAYER)
        per_endpoint, total = self.rate_limits()
        self.http = HttpClient(
            (config.base_url or BASE_URL).rstrip("/"),
            vendor="annolab",
            headers={"Authorization": f"Api-Key {self._key}"},
            rate_limit=per_endpoint,
            total_rate_limit=total,
            timeout=float(opts.get("timeout", 60.0)),
            max_retries=int(opts.get("max_retries", 5)),
            backoff_base=float(opts.get("backoff_base", 0.5)),
            stats=self.stats,
            secrets=(self._key,),
        )
        self._project_id: int | None = None
        self._jobs: dict[str, tuple[list[int], dict[int, str]]] = {}  # job id -> (source order, names)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    # -- models (read only) ------------------------------------------------------------
    def _models(self) -> list[dict[str, Any]]:
        data = self.http.json("GET", "/v1/models", operation="list models") or {}
        return [m for m in data.get("models") or [] if isinstance(m, dict)]

    def list_models(self) -> list[ModelSummary]:
        return [
            ModelSummary(remote_id=str(m.get("id")), title=str(m.get("name", "")), num_samples=m.get("numSamples"))
            for m in self._models()
        ]

    def view_model(self, remote_id: str) -> RemoteModel:
        for m in self._models():
            if str(m.get("id")) == str(remote_id):
                version = m.get("latestVersion")
                return RemoteModel(
                    remote_id=str(remote_id),
                    title=str(m.get("name", "")),
                    type=m.get("type"),
                    purpose=m.get("purpose"),
                    versions=[VersionInfo(version=str(version))] if m.get("trained") and version else [],
                )
        raise NotFound(f"annolab: model {remote_id} not found")

    def list_versions(self, remote_id: str) -> list[VersionInfo]:
        return self.view_model(remote_id).versions

    def create_model(self, title: str, type: str, purpose: str, tags: tuple[str, ...]) -> str:
        raise NotSupported(f"{NOT_HERE}: create model {title!r} in AnnoLab first")

    def delete_model(self, remote_id: str) -> None:
        raise NotSupported(NOT_HERE)

    def upload_sample(self, remote_id: str, item: Any) -> str | None:
        raise NotSupported(NOT_HERE)

    def delete_sample(self, remote_id: str, sample: RemoteSample) -> None:
        raise NotSupported(NOT_HERE)

    # -- inference -------------------------------------------------------------------
    def predict(self, remote_id: str, version: str | None, images: list[ImageInput], **kw: Any) -> list[Prediction]:
        raise NotSupported("annolab runs batch inference jobs only: use `modelsync infer MODEL --sources ...`")

    def _need_group(self) -> str:
        if not self.group:
            raise ProviderError(f"{self.config.name}: annolab needs group_name (the AnnoLab group of the project)")
        return self.group

    def _ensure_project(self) -> int:
        """The project's id, creating the project on first use."""
        with self._lock:
            if self._project_id is not None:
                return self._project_id
        group = self._need_group()
        path = f"/v1/project/{urllib.parse.quote(group, safe='')}/{urllib.parse.quote(self.project, safe='')}"
        try:
            data = self.http.json("GET", path, operation="find project")
        except NotFound:
            body = {"groupName": group, "projectName": self.project}
            data = self.http.json("POST", "/v1/project/create", operation="create project", json=body,
                                  ok_statuses={200, 201})
        if not isinstance(data, dict) or not isinstance(data.get("id"), int):
            raise ProviderError(f"annolab project {self.project!r}: answer has no project id")
        with self._lock:
            self._project_id = data["id"]
        return data["id"]

    def _upload(self, project_id: int, image: ImageInput) -> int:
        if image.data is not None:
            payload = data_uri(image.data)
        elif image.url:
            payload = image.url
        else:
            raise ProviderError(f"annolab upload source: {image.name}: no data and no URL")
        body = {"projectIdentifier": project_id, "groupName": self.group, "sourceName": image.name, "image": payload}
        data = self.http.json("POST", "/v1/source/create-image", operation=f"upload source {image.name}", json=body)
        sid = (data or {}).get("id")
        if not isinstance(sid, int):
            raise ProviderError(f"annolab upload source {image.name}: answer has no source id")
        return sid

    def start_inference(self, remote_id: str, version: str | None, images: list[ImageInput]) -> str:
        if not images:
            raise ProviderError("annolab infer: no sources given")
        project_id = self._ensure_project()
        source_ids = [self._upload(project_id, image) for image in images]
        body: dict[str, Any] = {
            "projectIdentifier": project_id,
            "modelIdentifier": int(remote_id) if str(remote_id).isdigit() else remote_id,
            "sourceIds": source_ids,
            "outputLayerIdentifier": self.layer,
            "groupName": self.group,
        }
        if version:
            body["modelVersion"] = version
        data = self.http.json("POST", "/v1/infer/batch", operation="request inference", json=body)
        job_id = (data or {}).get("inferenceJobId")
        if job_id is None:
            raise ProviderError("annolab request inference: answer has no inferenceJobId")
        with self._lock:
            self._jobs[str(job_id)] = (source_ids, {sid: image.name for sid, image in zip(source_ids, images,
                                                                                            strict=True)})
        return str(job_id)

    def inference_status(self, job_id: str) -> InferenceStatus:
        data = self.http.json("GET", f"/v1/infer/batch/{job_id}", operation="inference status") or {}
        state = str(data.get("status") or "Queued")
        progress = data.get("progress") or {}
        with self._lock:
            order, names = self._jobs.get(str(job_id), ([], {}))
        if not order:
            order = [int(s) for s in data.get("sourceIds") or [] if isinstance(s, int)]
        total = int(progress.get("total") or len(order))
        done = int(progress.get("done") or (total if state == "Finished" else 0))
        results: tuple[Prediction, ...] = ()
        if state == "Finished":
            layer_id = data.get("outputLayerId")
            if layer_id is None:
                raise ProviderError(f"annolab inference status: job {job_id} names no output layer id")
            layer = self.http.json(
                "GET", f"/v1/layer/{layer_id}/annotations", operation="read output layer",
                params={"inferenceJobId": job_id},
            ) or {}
            results = tuple(predictions_from(list(layer.get("annotations") or []), order, names))
        error = data.get("error") or ("the job errored" if state == "Errored" else None)
        return InferenceStatus(job_id=str(job_id), state=state, done=done, total=total, results=results, error=error)
