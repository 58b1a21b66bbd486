"""The astica dialect: train.astica.ai's /model/* and detect.astica.ai's /detect.

Request fields, answers and field names follow astica's documentation (the key travels
as ``tkn`` in the JSON body, ids may be ints or digit strings, errors are
``{"status": "ERROR", "error": ...}`` with HTTP 200). modelsync extensions, additive
and optional for clients:

* dataset entries: ``training_state`` (queued|training|trained|failed|canceled|null);
  /model/view also ``training_error`` and ``dataset_digest`` of the latest version;
* samples in /model/view: ``digest`` (sha256:...) and ``bytes``;
* /model/upload answers ``sample_id``; /model/sample_remove accepts ``model_id`` to
  scope a ``sample_uid``;
* /detect answers ``model_version``, ``scores`` (label -> 0..1) and, for detection
  models, ``boxes``.

/model/sample_remove: astica documents ``sample_id`` (the sample) and ``sample_uid``, "used
in place of sample_id: user provided id of this sample", with no model_id. So a uid names
one sample: it is looked up in the key's models; if exactly one sample has it, that one is
removed; if samples of several models have it, nothing is removed and the answer asks for
``model_id`` (the extension above) instead of guessing or removing them all.

API keys limited to a list of projects (``projects`` in the keys file): astica has no
projects, and its unit of access is the model (a model is a dataset, as an Autogon project
is), so the listed ids are model ids. Such a key lists and uses those models only, reaches
samples and classes only through them, and cannot create models (its list is fixed when the
server starts, so a new model would be invisible to it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from reconciler.local.serve.auth import PERM_EDIT, PERM_RUN, PERM_TRAIN, PERM_VIEW
from reconciler.local.serve.context import ApiError, Dialect, Principal, ServeContext, parse_id

MB = 1024 * 1024
Id = int | str


def error_response(err: ApiError) -> Response:
    """astica answers application errors with HTTP 200; transport-level ones keep their status."""
    if err.status == 429 or err.status >= 500 or err.code in ("validation", "no_route", "too_large"):
        status = err.status
    else:
        status = 200
    return JSONResponse({"status": "ERROR", "error": err.message}, status_code=status, headers=err.headers)


DIALECT = Dialect(name="astica", prefixes=("/model/", "/detect"), error_response=error_response)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tkn: str = Field(description="Your API key")


class CreateBody(_Body):
    dataset_title: str = Field(min_length=1, max_length=200)
    dataset_type: str = Field(max_length=64)
    dataset_purpose: str = Field(max_length=64)
    dataset_tags: str | None = Field(default=None, max_length=2000, description="comma-separated")


class ListBody(_Body):
    pass


class ViewBody(_Body):
    model_id: Id | None = Field(default=None, description="without it, the list of all models")


class UploadBody(_Body):
    model_id: Id
    model_class: str = Field(min_length=1, max_length=200)
    input: str = Field(description="https URL, base64 string, or data: URI of an image")
    uid: str | None = Field(default=None, max_length=200)


class ModelIdBody(_Body):
    model_id: Id


class SampleRemoveBody(_Body):
    sample_id: Id | None = None
    sample_uid: str | None = Field(default=None, max_length=200)
    model_id: Id | None = Field(default=None, description="modelsync extension: scope sample_uid to one model")


class ClassRemoveBody(_Body):
    class_id: Id


class DetectBody(_Body):
    model_id: Id
    model_version: str | None = Field(default=None, max_length=100, description="default: the latest version")
    input: str


OK = {"status": "OK"}


def _mb(n: int | float | None, digits: int) -> float:
    return round((n or 0) / MB, digits)


def _tags(tags: Any) -> str:
    return ",".join(tags or ())


def dataset_entry(m: Any) -> dict[str, Any]:
    """A ModelRecord as one entry of astica's dataset_list."""
    return {
        "id": m.id,
        "title": m.title,
        "numClass": m.num_classes,
        "numSample": m.num_samples,
        "total_size": _mb(m.total_bytes, 2),
        "trained": 1 if m.trained else 0,
        "model_version": m.latest_version or "",
        "date_trained": int(m.trained_at or 0),
        "date_created": int(m.created_at),
        "type": m.type,
        "purpose": m.purpose,
        "tags": _tags(m.tags),
        "training_state": m.training_state,
    }


def _sample(s: Any) -> dict[str, Any]:
    return {
        "id": s.id,
        "uid": s.uid or "",
        "size": _mb(s.size, 6),
        "date_created": str(int(s.created_at)),
        "digest": s.digest,
        "bytes": s.size,
    }


def _confidence_text(p: float) -> str:
    """astica writes confidence as a percent string ("100"); keep two decimals when needed."""
    return f"{p * 100:.2f}".rstrip("0").rstrip(".") or "0"


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter(tags=["astica"])
    svc = ctx.service

    def post(path: str, summary: str) -> Callable[[Callable], Callable]:
        """A POST route whose answer goes out as built. A handler returning a dict would get
        that as its response model, and FastAPI checks a sync handler's answer in the thread
        pool: a second thread hop a request, a third of an upload's cost in serve (measured)."""
        return r.post(path, summary=summary, response_model=None)

    def auth(body: _Body, request: Request, permission: str) -> Principal:
        # astica's limits are per host ("the training and inference endpoints are separated.
        # Each endpoint allows up to 90 requests per minute"): every /model/* call shares one.
        host = "detect.astica.ai" if request.url.path.rstrip("/").endswith("/detect") else "train.astica.ai"
        p = ctx.authenticate(body.tkn, request, message="Invalid API key", endpoint=host)
        p.require(permission)
        return p

    def visible_models(p: Principal) -> list[Any]:
        return sorted((m for m in svc.list_models(p.owner) if p.sees_project(m.id)), key=lambda m: m.id)

    def model_id_of(p: Principal, value: Any) -> int:
        model_id = parse_id(value, "model_id")
        p.check_project(model_id, "model")
        return model_id

    def model_list(p: Principal) -> dict[str, Any]:
        models = visible_models(p)
        return {
            "status": "OK",
            "astica": {"request": "dataset", "requestType": "list"},
            "dataset_list": [dataset_entry(m) for m in models],
        }

    @post("/model/create", summary="Create a model / dataset")
    def create(body: CreateBody, request: Request) -> dict[str, Any]:
        p = auth(body, request, PERM_EDIT)
        p.check_may_create_projects("model")
        title = body.dataset_title.strip()
        if not title:
            raise ApiError(400, "dataset_title: must not be empty")
        tags = tuple(t.strip() for t in (body.dataset_tags or "").split(",") if t.strip())
        kind, purpose = body.dataset_type.strip() or "vision", body.dataset_purpose.strip() or "classification"
        svc.create_model(p.owner, title, type=kind, purpose=purpose, tags=tags)
        return OK

    @post("/model/list", summary="List all models (the official samples' endpoint)")
    def list_models(body: ListBody, request: Request) -> Response:
        p = auth(body, request, PERM_VIEW)
        return JSONResponse(model_list(p))

    @post("/model/view", summary="View one model's classes and samples; without model_id, list all models")
    def view(body: ViewBody, request: Request) -> Response:
        p = auth(body, request, PERM_VIEW)
        if body.model_id is None or body.model_id == "":
            return JSONResponse(model_list(p))
        model_id = model_id_of(p, body.model_id)
        detail = svc.get_model(p.owner, model_id)
        dataset = dataset_entry(detail.model)
        dataset["training_error"] = None
        dataset["dataset_digest"] = None
        if detail.model.training_state in ("failed", "canceled"):
            job = svc.latest_training_job(p.owner, model_id)
            dataset["training_error"] = job.error if job else None
        if detail.model.latest_version:
            dataset["dataset_digest"] = svc.resolve_version(p.owner, model_id).dataset_digest
        dataset["class_list"] = [
            {
                "id": c.id,
                "title": c.title,
                "date_created": int(c.created_at),
                "samples": [_sample(s) for s in c.samples],
                "totalSize": _mb(c.total_bytes, 2),
            }
            for c in detail.classes
        ]
        head = {"status": "OK", "astica": {"request": "dataset", "requestType": "view"}}
        return JSONResponse({**head, "dataset": dataset})

    @post("/model/upload", summary="Add one training sample (class created if missing)")
    async def upload(body: UploadBody, request: Request) -> Response:
        p = auth(body, request, PERM_EDIT)
        model_id = model_id_of(p, body.model_id)
        stripped = body.input.strip()
        source_url = stripped if stripped[:8].lower().startswith(("http://", "https://")) else None
        uid = body.uid.strip() if body.uid and body.uid.strip() else None

        def add(wait: bool) -> Any:
            data = ctx.decode_input(body.input, "input", wait=wait)
            return svc.add_sample(
                p.owner, model_id, body.model_class.strip(), data, uid=uid, source_url=source_url, wait=wait
            )

        rec = await ctx.run_write(add)
        return JSONResponse({"status": "OK", "sample_id": rec.id})

    @post("/model/model_train", summary="Start a training round")
    def train(body: ModelIdBody, request: Request) -> dict[str, Any]:
        p = auth(body, request, PERM_TRAIN)
        model_id = model_id_of(p, body.model_id)
        detail = svc.get_model(p.owner, model_id)
        if sum(1 for c in detail.classes if c.samples) < 2:
            raise ApiError(400, "A model can be trained after adding at least two different classes")
        svc.start_training(p.owner, model_id)
        return OK

    @post("/model/sample_remove", summary="Remove a sample by sample_id or sample_uid")
    def sample_remove(body: SampleRemoveBody, request: Request) -> dict[str, Any]:
        from reconciler.local.errors import NotFoundError

        p = auth(body, request, PERM_EDIT)
        if body.sample_id not in (None, ""):
            sample_id = parse_id(body.sample_id, "sample_id")
            if p.project_scoped:
                p.check_project(svc.get_sample(p.owner, sample_id).model_id, "model")
            svc.delete_sample(p.owner, sample_id)
            return OK
        uid = (body.sample_uid or "").strip()
        if not uid:
            raise ApiError(400, "sample_id or sample_uid is required")
        if body.model_id not in (None, ""):
            model_ids = [model_id_of(p, body.model_id)]
        else:  # the uid names one sample: find which model holds it (see the module docstring)
            model_ids = []
            for m in visible_models(p):
                try:
                    svc.get_sample_by_uid(p.owner, m.id, uid)
                except NotFoundError:
                    continue
                model_ids.append(m.id)
            if len(model_ids) > 1:
                ids = ", ".join(map(str, model_ids))
                raise ApiError(409, f"sample_uid {uid!r}: samples of models {ids} have this uid; "
                               "send model_id to say which one to remove", code="conflict")
        if not model_ids or not svc.delete_sample_by_uid(p.owner, uid, model_ids[0]):
            raise ApiError(404, f"sample_uid {uid!r}: no such sample")
        return OK

    @post("/model/class_remove", summary="Remove a class and its samples")
    def class_remove(body: ClassRemoveBody, request: Request) -> dict[str, Any]:
        p = auth(body, request, PERM_EDIT)
        class_id = parse_id(body.class_id, "class_id")
        if p.project_scoped and not any(
            c.id == class_id for m in visible_models(p) for c in svc.get_model(p.owner, m.id).classes
        ):
            raise ApiError(404, f"class {class_id}: not found")
        svc.delete_class(p.owner, class_id)
        return OK

    @post("/model/model_remove", summary="Remove a model with all its classes and samples")
    def model_remove(body: ModelIdBody, request: Request) -> dict[str, Any]:
        p = auth(body, request, PERM_EDIT)
        svc.delete_model(p.owner, model_id_of(p, body.model_id))
        return OK

    @post("/detect", summary="Run a trained model on one image")
    def detect(body: DetectBody, request: Request) -> dict[str, Any]:
        p = auth(body, request, PERM_RUN)
        model_id = model_id_of(p, body.model_id)
        version = (body.model_version or "").strip() or None
        resolved = svc.resolve_version(p.owner, model_id, version)  # before a fetch of up to 20 s
        data = ctx.decode_input(body.input, "input")
        pred = svc.predict(p.owner, model_id, [data], version=resolved.version)[0]
        out: dict[str, Any] = {
            "status": "OK",
            "output": pred.get("label") or "",
            "confidence": _confidence_text(float(pred.get("confidence") or 0.0)),
            "model_version": resolved.version,
            "scores": pred.get("scores", {}),
        }
        if pred.get("boxes"):
            out["boxes"] = pred["boxes"]
        return out

    return r
