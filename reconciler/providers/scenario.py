"""Scenario: its ``train`` tool (upload_images, update_image, delete_image, configure, start, stop).

What the API makes hard, and how this provider copes:

* the tool has no create, list or read: models are created and read through the model
  endpoints `modelsync serve` documents in docs/WIRE.md (``/scenario/models``); ids are
  ``model_<n>`` and training image ids ``ti_<n>``.
* Scenario keeps no uid: a training image is reported with ``uid=None`` and its URL; the
  reconciler maps it to a uid through the image id ``upload_sample`` returns.
* a second upload of the same image is refused ("already a training image of this
  model"), which makes a re-sent upload safe: the existing image is found and returned.
* at most 10 images a call; this provider sends one per call (the reconciler uploads
  items one by one) and never more.
* config: the spec's names (steps, learning_rate, batch_size) are sent as Scenario's
  (maxTrainSteps, learningRate, batchSize) and read back the same way, so an unchanged
  config plans nothing. ``start`` takes no config, so each training run first sends its
  config with ``configure`` (an empty one resets the trainer's defaults).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from reconciler.model import (
    ModelSummary,
    RemoteModel,
    RemoteSample,
    TrainingStatus,
    TrainRequest,
    UploadItem,
    VersionInfo,
)
from reconciler.providers import base as caps
from reconciler.providers.base import NotFound, NotSupported, Provider, ProviderConfig, ProviderError
from reconciler.providers.http import HttpClient
from reconciler.sources import is_url

BASE_URL = "https://api.cloud.scenario.com"
TOOL = "/scenario/train"
MODELS = "/scenario/models"
DUPLICATE = "already a training image"

SPEC_TO_PARAM = {"steps": "maxTrainSteps", "learning_rate": "learningRate", "batch_size": "batchSize"}
PARAM_TO_SPEC = {v: k for k, v in SPEC_TO_PARAM.items()}


def to_params(config: dict[str, Any]) -> dict[str, Any]:
    return {SPEC_TO_PARAM.get(k, k): v for k, v in config.items()}


def from_params(params: dict[str, Any]) -> dict[str, Any]:
    return {PARAM_TO_SPEC.get(k, k): v for k, v in params.items()}



def version_of(v: dict[str, Any]) -> VersionInfo:
    """A trained version. Its config digest is left to the reconciler's own record: the remote one
    is computed over the trainer's names, which differ from the spec's when it uses Scenario's."""
    return VersionInfo(
        version=str(v.get("version")),
        dataset_digest=v.get("datasetDigest") or None,
        config_digest=None,
        trained_at=v.get("trainedAt") or None,
        metrics=v.get("metrics") or {},
        status=str(v.get("status") or "trained"),
    )


class ScenarioProvider(Provider):
    type = "scenario"
    capabilities = frozenset(
        {
            caps.CAP_MODELS,
            # Images are filed under image_data.className (a modelsync extension): without two
            # classes the spec refuses auto training, and the embedded trainer cannot train.
            caps.CAP_CLASSES,
            caps.CAP_UPLOAD_URLS,
            caps.CAP_DELETE_SAMPLE,
            caps.CAP_CAPTIONS,
            caps.CAP_CONFIGURE,
            caps.CAP_TRAIN,
            caps.CAP_STOP,
        }
    )
    default_rate_limit = None  # Scenario documents no number (it answers 429 with the wait)
    default_total_rate_limit = None
    poll_interval = 1.0

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        if not config.api_key:
            raise ProviderError(f"{config.name}: scenario needs api_key (e.g. api_key: ${{env:SCENARIO_API_KEY}})")
        self._key = config.api_key
        opts = config.options or {}
        self.team_id = opts.get("team_id")
        self.project_id = opts.get("project_id")
        per_endpoint, total = self.rate_limits()
        self.http = HttpClient(
            (config.base_url or BASE_URL).rstrip("/"),
            vendor="scenario",
            headers={"Authorization": f"Bearer {self._key}"},
            rate_limit=per_endpoint,
            total_rate_limit=total,
            timeout=float(opts.get("timeout", 60.0)),
            max_retries=int(opts.get("max_retries", 5)),
            backoff_base=float(opts.get("backoff_base", 0.5)),
            stats=self.stats,
            secrets=(self._key,),
        )

    def close(self) -> None:
        self.http.close()

    # -- plumbing ------------------------------------------------------------------
    def _scope(self) -> dict[str, str]:
        out = {}
        if self.team_id:
            out["team_id"] = str(self.team_id)
        if self.project_id:
            out["project_id"] = str(self.project_id)
        return out

    def _tool(
        self, action: str, model_id: str, operation: str, *, landed: Callable[[], bool] | None = None, **args: Any
    ) -> dict[str, Any] | None:
        """One call of the train tool; None when ``landed`` said a lost answer's effect is there."""
        body = {"action": action, "model_id": model_id, **args, **self._scope(), "response_format": "json"}
        data = self.http.json("POST", TOOL, operation=operation, json=body, landed=landed)
        return data if isinstance(data, dict) or data is None else {}

    def _model(self, remote_id: str) -> dict[str, Any]:
        data = self.http.json("GET", f"{MODELS}/{remote_id}", operation="view model", params=self._scope()) or {}
        model = data.get("model")
        if not isinstance(model, dict):
            raise ProviderError(f"scenario view model: no model in the answer for {remote_id}")
        return model

    def _models(self) -> list[dict[str, Any]]:
        data = self.http.json("GET", MODELS, operation="list models", params=self._scope()) or {}
        return [m for m in data.get("models") or [] if isinstance(m, dict)]

    # -- models --------------------------------------------------------------------
    def list_models(self) -> list[ModelSummary]:
        return [
            ModelSummary(remote_id=str(m.get("id")), title=str(m.get("name", "")),
                         num_samples=m.get("trainingImagesNumber"))
            for m in self._models()
        ]

    def view_model(self, remote_id: str) -> RemoteModel:
        m = self._model(remote_id)
        samples = [
            RemoteSample(
                remote_id=str(img.get("id")),
                uid=None,
                class_name=str(img.get("className") or ""),
                size=img.get("size"),
                digest=img.get("digest") or None,
                caption=img.get("description") or None,
                url=img.get("url") or None,
            )
            for img in m.get("trainingImages") or []
            if isinstance(img, dict)
        ]
        job = m.get("trainingJob") or {}
        training = job.get("state") if job.get("state") in ("queued", "training") else None
        if training is None and m.get("status") == "training":
            training = "training"
        return RemoteModel(
            remote_id=str(m.get("id", remote_id)),
            title=str(m.get("name", "")),
            type=m.get("type"),
            purpose=m.get("purpose"),
            tags=tuple(str(t) for t in m.get("tags") or ()),
            classes={s.class_name: "" for s in samples},
            samples=samples,
            versions=[version_of(v) for v in m.get("versions") or [] if v.get("status") == "trained"],
            training_status=training,
            config=from_params(m.get("parameters") or {}),
        )

    def create_model(self, title: str, type: str, purpose: str, tags: tuple[str, ...]) -> str:
        before = {str(m.get("id")) for m in self._models() if m.get("name") == title}

        def new_ids() -> list[str]:
            ids = (str(m.get("id")) for m in self._models() if m.get("name") == title)
            return [i for i in ids if i not in before]

        body = {"name": title, "type": type, "purpose": purpose, "tags": list(tags), **self._scope()}
        data = self.http.json("POST", MODELS, operation="create model", json=body, landed=lambda: bool(new_ids()))
        model = (data or {}).get("model") if isinstance(data, dict) else None
        if isinstance(model, dict) and model.get("id"):
            return str(model["id"])
        found = new_ids()
        if len(found) != 1:
            raise ProviderError(f"scenario create model: expected one new model named {title!r}, found "
                                f"{', '.join(found) or 'none'}")
        return found[0]

    def delete_model(self, remote_id: str) -> None:
        with contextlib.suppress(NotFound):
            self.http.request("DELETE", f"{MODELS}/{remote_id}", operation="delete model", params=self._scope())

    # -- training images ------------------------------------------------------------
    def _find_image(self, remote_id: str, item: UploadItem) -> str | None:
        for img in self._model(remote_id).get("trainingImages") or []:
            if (item.digest and img.get("digest") == item.digest) or (item.url and img.get("url") == item.url):
                return str(img.get("id"))
        return None

    def upload_sample(self, remote_id: str, item: UploadItem) -> str | None:
        if not is_url(item.url):
            raise NotSupported(f"scenario: {item.filename}: Scenario takes training images by http(s) URL only")
        meta: dict[str, Any] = {"className": item.class_name}
        if item.caption:
            meta["description"] = item.caption
        try:
            data = self._tool(
                "upload_images",
                remote_id,
                f"upload {item.uid}",
                images=[item.url],
                image_data=meta,
                landed=lambda: self._find_image(remote_id, item) is not None,
            )
        except ProviderError as exc:
            if exc.status != 400 or DUPLICATE not in str(exc):
                raise
            data = None  # the image is already there (a re-sent upload): find it
        ids = (data or {}).get("training_image_ids") or []
        if ids:
            return str(ids[0])
        return self._find_image(remote_id, item)

    def delete_sample(self, remote_id: str, sample: RemoteSample) -> None:
        if not sample.remote_id:
            raise ProviderError(f"scenario delete image: {sample.uid or 'sample'} has no training image id")
        with contextlib.suppress(NotFound):
            self._tool("delete_image", remote_id, f"delete image {sample.remote_id}",
                       training_image_id=sample.remote_id)

    def update_sample(self, remote_id: str, sample: RemoteSample, caption: str | None, boxes: tuple) -> None:
        if boxes:
            raise NotSupported("scenario: training images have no boxes")
        self._tool("update_image", remote_id, f"caption image {sample.remote_id}",
                   training_image_id=sample.remote_id, image_data={"description": caption})

    # -- training ------------------------------------------------------------------
    def configure(self, remote_id: str, config: dict[str, Any]) -> None:
        self._tool("configure", remote_id, "configure", config=to_params(config))

    def start_training(self, remote_id: str, request: TrainRequest) -> str:
        """configure (the run's config travels with it) then start; the handle is the job id."""
        self.configure(remote_id, dict(request.config))
        before = (self._model(remote_id).get("trainingJob") or {}).get("id")

        def current_job() -> Any:
            return (self._model(remote_id).get("trainingJob") or {}).get("id")

        data = self._tool("start", remote_id, "start training", landed=lambda: current_job() not in (None, before))
        job_id = (data or {}).get("job_id")
        if job_id is None:
            job_id = current_job()
        if job_id is None or job_id == before:
            raise ProviderError(f"scenario start training: no training job appeared for {remote_id}")
        return str(job_id)

    def training_status(self, remote_id: str, handle: str) -> TrainingStatus:
        m = self._model(remote_id)
        job = m.get("trainingJob") or {}
        if str(job.get("id")) != str(handle):
            return TrainingStatus("failed", None, None, f"training job {handle} was replaced by job {job.get('id')}")
        state = job.get("state")
        if state == "trained":
            for v in m.get("versions") or []:
                if v.get("version") == job.get("version"):
                    return TrainingStatus("trained", 1.0, version_of(v))
            return TrainingStatus("failed", None, None, f"version {job.get('version')} is not listed")
        if state in ("failed", "canceled"):
            return TrainingStatus(state, None, None, job.get("error") or f"training {state}")
        return TrainingStatus(state if state in ("queued", "training") else "training", job.get("progress"))

    def stop_training(self, remote_id: str, handle: str | None) -> None:
        try:
            self._tool("stop", remote_id, "stop training")
        except ProviderError as exc:
            if exc.status != 400 or "not training" not in str(exc):
                raise

    def list_versions(self, remote_id: str) -> list[VersionInfo]:
        return [version_of(v) for v in self._model(remote_id).get("versions") or [] if v.get("status") == "trained"]
