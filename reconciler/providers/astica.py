"""astica: train.astica.ai (/model/*) and detect.astica.ai (/detect).

What the API makes hard, and how this provider copes:

* create answers no id: the new model is found by listing and matching the title;
  after a lost answer the listing is checked before creating again.
* uploads are not idempotent on the vendor: after a lost answer the model is viewed
  to see whether the uid landed before re-sending.
* training has no job: the handle is the model_version before the run, and the run is
  over when the model is trained with a different model_version.
* errors come as {"status": "ERROR", "error": ...}, usually with HTTP 200.
* "Each endpoint allows up to 90 requests per minute, for a total of 180": the two
  endpoints are the two hosts, training (every /model/* call) and inference (/detect),
  so every training call shares one budget (``rate_bucket``), not one per path.

Fields marked as modelsync extensions by `modelsync serve` (digest, training_state,
dataset_digest, sample_id, scores) are used when present and never required.
"""

from __future__ import annotations

import contextlib
import datetime as dt
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
from reconciler.providers.base import NotFound, Provider, ProviderConfig, ProviderError
from reconciler.providers.datauri import base64_text, data_uri
from reconciler.providers.http import HttpClient, error_text
from reconciler.sources import is_url

TRAIN_URL = "https://train.astica.ai"
DETECT_URL = "https://detect.astica.ai"
MB = 1024 * 1024


def rate_bucket(path: str) -> str:
    """astica's rate-limit endpoint of a request path: its host, training or inference."""
    return "detect.astica.ai" if path.rstrip("/").endswith("/detect") else "train.astica.ai"


def _iso(ts: Any) -> str | None:
    try:
        value = int(ts)
    except (TypeError, ValueError):
        return None
    if value <= 0:
        return None
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(t) for t in value)
    return tuple(t.strip() for t in str(value or "").split(",") if t.strip())


def parse_confidence(value: Any) -> float:
    """astica's percent string ("100", "87.5") -> 0..1."""
    try:
        pct = float(str(value).strip().rstrip("%"))
    except ValueError:
        return 0.0
    return max(0.0, min(1.0, pct / 100.0))


def _is_not_found(text: str) -> bool:
    t = text.lower()
    return "not found" in t or "no such" in t or "does not exist" in t


class AsticaProvider(Provider):
    type = "astica"
    capabilities = frozenset(
        {
            caps.CAP_MODELS,
            caps.CAP_CLASSES,
            caps.CAP_DELETE_CLASS,
            caps.CAP_UPLOAD_BYTES,
            caps.CAP_UPLOAD_URLS,
            caps.CAP_DELETE_SAMPLE,
            caps.CAP_TRAIN,
            caps.CAP_PREDICT,
            caps.CAP_SAMPLE_UIDS,
        }
    )
    default_rate_limit = 90
    default_total_rate_limit = 180
    poll_interval = 2.0

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        if not config.api_key:
            raise ProviderError(f"{config.name}: astica needs api_key (e.g. api_key: ${{env:ASTICA_API_KEY}})")
        self._key = config.api_key
        base = (config.base_url or "").rstrip("/")
        self.train_url = base or TRAIN_URL
        self.detect_url = base or DETECT_URL
        opts = config.options or {}
        per_endpoint, total = self.rate_limits()
        # URL samples are passed to astica to fetch, unless `send_urls: false` (then their bytes are sent).
        self.send_urls = bool(opts.get("send_urls", True))
        self.http = HttpClient(
            self.train_url,
            vendor="astica",
            rate_limit=per_endpoint,
            total_rate_limit=total,
            timeout=float(opts.get("timeout", 30.0)),
            max_retries=int(opts.get("max_retries", 5)),
            backoff_base=float(opts.get("backoff_base", 0.5)),
            stats=self.stats,
            secrets=(self._key,),
            rate_bucket=rate_bucket,
        )

    def close(self) -> None:
        self.http.close()

    # -- plumbing ------------------------------------------------------------------
    def _call(self, path: str, operation: str, body: dict[str, Any], **kw: Any) -> dict[str, Any] | None:
        """POST ``body`` + tkn; an astica ERROR answer (whatever the HTTP status) -> ProviderError."""
        resp = self.http.request(
            "POST", path, json={"tkn": self._key, **body}, operation=operation, raise_for_status=False, **kw
        )
        if resp is None:  # landed() said the effect is there
            return None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("status") == "ERROR":
            text = str(data.get("error") or "error")
            cls = NotFound if _is_not_found(text) else ProviderError
            raise cls(self.http.scrub(f"astica {operation}: {text} (HTTP {resp.status_code})"), status=resp.status_code)
        if resp.status_code >= 400:
            raise self.http.error(operation, error_text(resp), resp.status_code)
        if not isinstance(data, dict):
            raise self.http.error(operation, "answer is not a JSON object", resp.status_code)
        return data

    def _list(self) -> list[dict[str, Any]]:
        data = self._call("/model/list", "list models", {}) or {}
        entries = data.get("dataset_list") or []
        return [e for e in entries if isinstance(e, dict)]

    def _entry(self, remote_id: str) -> dict[str, Any]:
        for e in self._list():
            if str(e.get("id")) == str(remote_id):
                return e
        raise NotFound(f"astica: model {remote_id} not found")

    @staticmethod
    def _id(remote_id: str) -> int | str:
        return int(remote_id) if str(remote_id).isdigit() else remote_id

    # -- models --------------------------------------------------------------------
    def list_models(self) -> list[ModelSummary]:
        return [
            ModelSummary(remote_id=str(e.get("id")), title=str(e.get("title", "")), num_samples=e.get("numSample"))
            for e in self._list()
        ]

    def view_model(self, remote_id: str) -> RemoteModel:
        data = self._call("/model/view", "view model", {"model_id": self._id(remote_id)}) or {}
        ds = data.get("dataset")
        if not isinstance(ds, dict):
            raise ProviderError(f"astica view model: answer has no dataset for model {remote_id}")
        classes: dict[str, str] = {}
        samples: list[RemoteSample] = []
        for c in ds.get("class_list") or []:
            name = str(c.get("title", ""))
            classes[name] = str(c.get("id", ""))
            for s in c.get("samples") or []:
                size = s.get("bytes")
                if not isinstance(size, int):
                    try:
                        size = int(round(float(s.get("size") or 0) * MB))
                    except (TypeError, ValueError):
                        size = None
                samples.append(
                    RemoteSample(
                        remote_id=str(s.get("id")),
                        uid=str(s["uid"]) if s.get("uid") else None,
                        class_name=name,
                        size=size,
                        digest=s.get("digest") or None,
                    )
                )
        return RemoteModel(
            remote_id=str(ds.get("id", remote_id)),
            title=str(ds.get("title", "")),
            type=ds.get("type"),
            purpose=ds.get("purpose"),
            tags=_tags(ds.get("tags")),
            classes=classes,
            samples=samples,
            versions=self._versions(ds),
            training_status=ds.get("training_state") if ds.get("training_state") in ("queued", "training") else None,
        )

    @staticmethod
    def _versions(entry: dict[str, Any]) -> list[VersionInfo]:
        version = entry.get("model_version")
        if not (str(entry.get("trained", 0)) == "1" and version):
            return []
        return [
            VersionInfo(
                version=str(version),
                dataset_digest=entry.get("dataset_digest") or None,
                trained_at=_iso(entry.get("date_trained")),
            )
        ]

    def _find_by_title(self, title: str) -> list[dict[str, Any]]:
        return [e for e in self._list() if e.get("title") == title]

    def create_model(self, title: str, type: str, purpose: str, tags: tuple[str, ...]) -> str:
        # astica's create answers no id: the new model is the one titled `title` that a listing
        # taken just before did not hold. (Not the plan's own listing: an interactive apply may
        # wait minutes for its "yes", and a model created meanwhile must not pass for ours.)
        before = {str(e.get("id")) for e in self._find_by_title(title)}
        body = {"dataset_title": title, "dataset_type": type, "dataset_purpose": purpose}
        body["dataset_tags"] = ",".join(tags)
        self._call("/model/create", "create model", body, landed=lambda: bool(self._new_ids(title, before)))
        new = self._new_ids(title, before)
        if len(new) != 1:
            found = ", ".join(sorted(new)) or "none"
            raise ProviderError(f"astica create model: expected one new model titled {title!r}, found {found}")
        return new[0]

    def _new_ids(self, title: str, before: set[str]) -> list[str]:
        return [str(e.get("id")) for e in self._find_by_title(title) if str(e.get("id")) not in before]

    def delete_model(self, remote_id: str) -> None:
        with contextlib.suppress(NotFound):  # already gone: what we wanted
            self._call(
                "/model/model_remove",
                "remove model",
                {"model_id": self._id(remote_id)},
                landed=lambda: not any(str(e.get("id")) == str(remote_id) for e in self._list()),
            )

    # -- samples -------------------------------------------------------------------
    def _uid_landed(self, remote_id: str, item: UploadItem) -> bool:
        model = self.view_model(remote_id)
        return any(s.uid == item.uid and s.class_name == item.class_name for s in model.samples)

    def upload_sample(self, remote_id: str, item: UploadItem) -> str | None:
        send_url = self.send_urls and item.url is not None and is_url(item.url)
        payload = item.url if send_url else None
        if payload is None:
            payload = base64_text(item.read())
        body = {"model_id": self._id(remote_id), "model_class": item.class_name, "input": payload, "uid": item.uid}
        data = self._call(
            "/model/upload", f"upload {item.uid}", body, landed=lambda: self._uid_landed(remote_id, item)
        )
        sample_id = (data or {}).get("sample_id")
        return str(sample_id) if sample_id is not None else None

    def delete_sample(self, remote_id: str, sample: RemoteSample) -> None:
        if sample.remote_id:
            body: dict[str, Any] = {"sample_id": self._id(sample.remote_id)}
        elif sample.uid:
            body = {"sample_uid": sample.uid, "model_id": self._id(remote_id)}
        else:
            raise ProviderError("astica remove sample: the sample has neither an id nor a uid")
        with contextlib.suppress(NotFound):
            self._call("/model/sample_remove", f"remove sample {sample.uid or sample.remote_id}", body)

    def delete_class(self, remote_id: str, class_name: str, class_id: str) -> None:
        if not class_id:
            class_id = self.view_model(remote_id).classes.get(class_name, "")
            if not class_id:
                return
        with contextlib.suppress(NotFound):
            self._call("/model/class_remove", f"remove class {class_name}", {"class_id": self._id(class_id)})

    # -- training ------------------------------------------------------------------
    def start_training(self, remote_id: str, request: TrainRequest) -> str:
        before = str(self._entry(remote_id).get("model_version") or "")

        def landed() -> bool:
            e = self._entry(remote_id)
            return e.get("training_state") in ("queued", "training") or (
                str(e.get("trained")) == "1" and str(e.get("model_version") or "") != before
            )

        try:
            self._call("/model/model_train", "train", {"model_id": self._id(remote_id)}, landed=landed)
        except ProviderError as exc:
            if "already training" not in str(exc).lower():
                raise
        return before

    def training_status(self, remote_id: str, handle: str) -> TrainingStatus:
        e = self._entry(remote_id)
        version = str(e.get("model_version") or "")
        state = e.get("training_state")
        if str(e.get("trained")) == "1" and version and version != (handle or ""):
            return TrainingStatus("trained", 1.0, self._versions(e)[0])
        if state in ("failed", "canceled"):
            error = None
            try:
                ds = (self._call("/model/view", "view model", {"model_id": self._id(remote_id)}) or {}).get("dataset")
                error = (ds or {}).get("training_error")
            except ProviderError:
                pass
            return TrainingStatus(state, None, None, error or f"training {state}")
        return TrainingStatus("queued" if state == "queued" else "training")

    def list_versions(self, remote_id: str) -> list[VersionInfo]:
        return self._versions(self._entry(remote_id))

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
            version = str(self._entry(remote_id).get("model_version") or "") or None
            if version is None:
                raise ProviderError(f"astica detect: model {remote_id} has no trained version")
        out: list[Prediction] = []
        for image in images:
            payload = data_uri(image.data) if image.data is not None else image.url
            if not payload:
                raise ProviderError(f"astica detect: {image.name}: no data and no URL")
            body = {"model_id": self._id(remote_id), "model_version": version, "input": payload}
            data = self._call(self.detect_url + "/detect", f"detect {image.name}", body) or {}
            scores = {str(k): float(v) for k, v in (data.get("scores") or {}).items()}
            boxes = tuple(
                Box(
                    label=str(b.get("label", "")),
                    x=float(b.get("x", 0)),
                    y=float(b.get("y", 0)),
                    w=float(b.get("w", 0)),
                    h=float(b.get("h", 0)),
                    confidence=float(b["confidence"]) if b.get("confidence") is not None else None,
                )
                for b in data.get("boxes") or []
            )
            out.append(
                Prediction(
                    input=image.name,
                    label=str(data.get("output")) if data.get("output") not in (None, "") else None,
                    confidence=parse_confidence(data.get("confidence")),
                    boxes=boxes,
                    scores=scores,
                )
            )
        return out
