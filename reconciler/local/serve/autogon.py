"""The Autogon LabelCraft dialect: images, annotations, train and predict under /api/v1/label/.

Followed from Autogon's docs and samples: the key travels in the ``X-AUG-KEY`` header;
``POST /api/v1/label/image/`` {images: [urls], project_id}; ``GET /api/v1/label/image?project_id=``
lists image ids with their annotations ``{"lbl", "bbx": {x, y, w, h}}``; ``DELETE
/api/v1/label/image/`` {images: [ids], project_id}; ``POST /api/v1/label/model/train/``
{model_type small|medium|large, project_id, model_load_name, model_save_name} answers 201 with
the model's metrics (training runs while the request waits); ``POST /api/v1/label/model/predict/``
{app_id, image_urls, confidence_thresh, overlap_thresh, model_name} answers
``{status, annotations: {<image url>: [{lbl, conf, bbx}]}}``. A project is a model of the
key's owner; a saved model is a trained version, named by model_save_name.

modelsync extensions (documented in docs/WIRE.md): project create/list/view/delete under
``/api/v1/label/project/``; ``POST /api/v1/label/annotation/`` to set an image's boxes; an
image may be given as ``{"url", "lbl", "annotations"}`` to attach its class and boxes; image
entries carry ``image_url``, ``lbl`` (the image's class), ``digest`` and ``size``; image URLs
may also be ``data:`` URIs. Answers use Autogon's envelope ``{"status": true, "message",
"data"}``; errors are ``{"status": false, "message": ...}`` with the HTTP status.

Annotations: the body is Autogon's documented ``{"image_id": 91, "annotations": [{"lbl",
"bbx": {x, y, w, h}}]}``; ``project_id`` is optional there (an image id names its project;
when given, the image must be in it).

Boxes are pixels of the image (x, y its top-left corner). Autogon's documents say nothing
about boxes beyond the image, so nothing is clipped or rewritten: a box is stored as sent
when at least a pixel of it lies on the image, and refused (400) otherwise. That is the
trainer's own rule (``trainer.detection.clip_box``): it cuts a box to the image and drops
one with less than a pixel inside, so a refused box is one training would silently ignore.
The image's size is read the way the trainer reads it (EXIF rotation applied).

API keys limited to a list of projects (``projects`` in the keys file) see and use those
projects only, and cannot create projects: the list is fixed when the server starts, so a
new project would be one the key cannot see. A ``model_load_name`` must also name a model
saved in one of the key's projects.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from reconciler.local.serve.auth import PERM_EDIT, PERM_RUN, PERM_TRAIN, PERM_VIEW
from reconciler.local.serve.context import ApiError, Dialect, Principal, ServeContext, parse_id

PREFIX = "/api/v1/label"
MODEL_TYPES = ("small", "medium", "large")
UNLABELED = "unlabeled"  # the class of an image uploaded with no label at all
MAX_IMAGES_PER_CALL = 100
TRAIN_WAIT_SECONDS = 1800.0  # the train call answers 202 "still training" after this

Id = int | str


def error_response(err: ApiError) -> Response:
    return JSONResponse({"status": False, "message": err.message}, status_code=err.status, headers=err.headers)


DIALECT = Dialect(name="autogon", prefixes=(PREFIX + "/",), error_response=error_response)


class Bbx(BaseModel):
    model_config = ConfigDict(extra="ignore")
    x: float
    y: float
    w: float
    h: float


class Annotation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lbl: str = Field(max_length=200)
    bbx: Bbx | None = None


class ImageItem(BaseModel):
    """modelsync extension: an image with its class and boxes (a bare URL string is also accepted)."""

    model_config = ConfigDict(extra="ignore")
    url: str
    lbl: str | None = Field(default=None, max_length=200)
    annotations: list[Annotation] = Field(default_factory=list, max_length=1000)


class AddImagesBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    project_id: Id
    images: list[str | ImageItem] = Field(description="image URLs (or {url, lbl, annotations} objects)")
    lbl: str | None = Field(default=None, max_length=200, description="modelsync extension: class of bare URLs")


class DeleteImagesBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    project_id: Id
    images: list[Id] = Field(description="image ids")


class SetAnnotationsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    project_id: Id | None = Field(default=None, description="optional: the image's project (checked when given)")
    image_id: Id
    annotations: list[Annotation] = Field(max_length=1000)


class CreateProjectBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=200)
    type: str = Field(default="vision", max_length=64)
    purpose: str = Field(default="detection", max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=50)


class TrainBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_type: str = Field(description="small, medium or large")
    project_id: Id
    model_load_name: str | None = Field(default=None, max_length=200, description="retrain from this saved model")
    model_save_name: str | None = Field(default=None, max_length=200)


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    app_id: Id = Field(description="the project's id")
    image_urls: list[str]
    confidence_thresh: float | None = None
    overlap_thresh: float | None = None
    model_name: str = Field(max_length=200)


# --------------------------------------------------------------------------- shapes


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else None


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else round(float(v), 3)


def annotation_of(box: dict[str, Any]) -> dict[str, Any]:
    """The service's box dict -> Autogon's {lbl, bbx}."""
    return {"lbl": box["label"], "bbx": {k: _num(box[k]) for k in ("x", "y", "w", "h")}}


def image_entry(s: Any) -> dict[str, Any]:
    return {
        "image_id": s.id,
        "image_url": s.source_url,
        "lbl": s.class_title,
        "annotations": [annotation_of(b) for b in s.boxes],
        "digest": s.digest,
        "size": s.size,
        "width": s.width,
        "height": s.height,
    }


def project_entry(m: Any) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.title,
        "type": m.type,
        "purpose": m.purpose,
        "tags": list(m.tags),
        "num_images": m.num_samples,
        "num_classes": m.num_classes,
        "trained": m.trained,
        "training_state": m.training_state,
        "created_at": _iso(m.created_at),
    }


def saved_model_entry(v: Any) -> dict[str, Any]:
    return {
        "model_name": v.save_name or v.version,
        "model_version": v.version,
        "model_type": v.model_type,
        "model_load_name": v.base,
        "status": v.status,
        "metrics": v.metrics,
        "trained_at": _iso(v.trained_at),
        "error": v.error,
        "dataset_digest": v.dataset_digest,
        "config_digest": v.config_digest,
    }


def boxes_of(annotations: list[Annotation], where: str) -> tuple[dict[str, Any], ...]:
    """Autogon annotations -> the service's box dicts; an annotation without bbx carries no box."""
    out = []
    for i, a in enumerate(annotations):
        lbl = a.lbl.strip()
        if not lbl:
            raise ApiError(400, f"{where}[{i}].lbl: must not be empty")
        if a.bbx is None:
            continue
        b = a.bbx
        for name in ("x", "y"):
            if getattr(b, name) < 0:
                raise ApiError(400, f"{where}[{i}].bbx.{name}: must be >= 0, got {getattr(b, name)!r}")
        for name in ("w", "h"):
            if getattr(b, name) <= 0:
                raise ApiError(400, f"{where}[{i}].bbx.{name}: must be > 0, got {getattr(b, name)!r}")
        out.append({"label": lbl, "x": b.x, "y": b.y, "w": b.w, "h": b.h})
    return tuple(out)


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the trainer sees the image (EXIF-rotated); None if it does not decode
    (the service then refuses the image with its own message)."""
    from reconciler.local.trainer.errors import InvalidImage
    from reconciler.local.trainer.features import image_size

    try:
        return image_size(data)
    except InvalidImage:
        return None


def check_boxes_on_image(boxes: tuple[dict[str, Any], ...], size: tuple[int, int] | None, where: str) -> None:
    """400 for a box with less than a pixel on the image: the trainer would drop it (see the docstring)."""
    from reconciler.local.trainer.detection import clip_box

    if size is None:
        return
    width, height = size
    for i, b in enumerate(boxes):
        if clip_box((b["x"], b["y"], b["w"], b["h"]), width, height) is None:
            shown = ", ".join(f"{k}={_num(b[k])}" for k in ("x", "y", "w", "h"))
            raise ApiError(400, f"{where}[{i}].bbx: the box ({shown}) lies outside the {width}x{height} image")


def _threshold(value: float | None, field: str) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ApiError(400, f"{field}: must be between 0 and 1, got {value!r}")
    return value


def ok(message: str, data: Any = None, status: int = 200) -> JSONResponse:
    body: dict[str, Any] = {"status": True, "message": message}
    if data is not None:
        body["data"] = data
    return JSONResponse(body, status_code=status)


# --------------------------------------------------------------------------- router


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter(tags=["autogon"])
    svc = ctx.service

    def route(method: str, path: str, **kw: Any) -> Callable[[Callable], Callable]:
        """Register ``path`` with and without its trailing slash (Autogon's clients use both)."""

        def deco(fn: Callable) -> Callable:
            r.add_api_route(path, fn, methods=[method], **kw)
            other = path.rstrip("/") if path.endswith("/") else path + "/"
            r.add_api_route(other, fn, methods=[method], include_in_schema=False, **kw)
            return fn

        return deco

    def auth(key: str | None, request: Request, permission: str, project: Any = None) -> Principal:
        p = ctx.authenticate(key, request, message="Invalid API key: send it in the X-AUG-KEY header")
        p.require(permission)
        if project is not None:
            p.check_project(project)
        return p

    def _project(read: Callable[[str, int], Any], p: Principal, project_id: Any, field: str) -> Any:
        from reconciler.local.errors import NotFoundError

        pid = parse_id(project_id, field)
        p.check_project(pid)
        try:
            return read(p.owner, pid)
        except NotFoundError:
            raise ApiError(404, f"{field}: project {pid} not found") from None

    def project_detail(p: Principal, project_id: Any, field: str = "project_id") -> Any:
        return _project(svc.get_model, p, project_id, field)

    def project_record(p: Principal, project_id: Any, field: str = "project_id") -> Any:
        """Like project_detail, without reading the project's images."""
        return _project(svc.get_model_record, p, project_id, field)

    # -- projects (modelsync extension) ----------------------------------------------
    @route("POST", PREFIX + "/project/", status_code=201, summary="modelsync extension: create a project")
    def create_project(body: CreateProjectBody, request: Request, x_aug_key: str | None = Header(None)) -> Response:
        p = auth(x_aug_key, request, PERM_EDIT)
        p.check_may_create_projects()
        name = body.name.strip()
        if not name:
            raise ApiError(400, "name: must not be empty")
        tags = tuple(t.strip() for t in body.tags if t.strip())
        rec = svc.create_model(p.owner, name, type=body.type or "vision", purpose=body.purpose or "detection",
                               tags=tags)
        return ok("Project created", project_entry(rec), 201)

    @route("GET", PREFIX + "/project/", summary="modelsync extension: list projects")
    def list_projects(request: Request, x_aug_key: str | None = Header(None)) -> Response:
        p = auth(x_aug_key, request, PERM_VIEW)
        models = sorted(svc.list_models(p.owner), key=lambda m: m.id)
        allowed = p.info.project_ids
        if allowed is not None:
            models = [m for m in models if str(m.id) in allowed]
        return ok("Projects", [project_entry(m) for m in models])

    @route("GET", PREFIX + "/project/{project_id}/", summary="modelsync extension: a project, images, saved models")
    def view_project(project_id: str, request: Request, x_aug_key: str | None = Header(None)) -> Response:
        p = auth(x_aug_key, request, PERM_VIEW)
        detail = project_detail(p, project_id)
        data = project_entry(detail.model)
        data["classes"] = [c.title for c in detail.classes]
        data["images"] = [image_entry(s) for c in detail.classes for s in c.samples]
        data["models"] = [saved_model_entry(v) for v in svc.list_versions(p.owner, detail.model.id)]
        job = svc.latest_training_job(p.owner, detail.model.id)
        data["training"] = (
            None
            if job is None
            else {"job_id": job.id, "state": job.state, "progress": job.progress, "error": job.error}
        )
        return ok("Project", data)

    @route("DELETE", PREFIX + "/project/{project_id}/", summary="modelsync extension: delete a project")
    def delete_project(project_id: str, request: Request, x_aug_key: str | None = Header(None)) -> Response:
        p = auth(x_aug_key, request, PERM_EDIT)
        detail = project_detail(p, project_id)
        svc.delete_model(p.owner, detail.model.id)
        return ok("Project deleted")

    # -- images -------------------------------------------------------------------
    @route("POST", PREFIX + "/image/", status_code=201, summary="Add images to a project by URL")
    def add_images(body: AddImagesBody, request: Request, x_aug_key: str | None = Header(None)) -> Response:
        p = auth(x_aug_key, request, PERM_EDIT)
        detail = project_detail(p, body.project_id)
        if not body.images:
            raise ApiError(400, "images: must hold at least one image URL")
        if len(body.images) > MAX_IMAGES_PER_CALL:
            raise ApiError(400, f"images: at most {MAX_IMAGES_PER_CALL} images a call, got {len(body.images)}")
        default_lbl = (body.lbl or "").strip() or None
        prepared = []
        for i, item in enumerate(body.images):
            where = f"images[{i}]"
            entry = ImageItem(url=item) if isinstance(item, str) else item
            boxes = boxes_of(entry.annotations, where + ".annotations")
            lbl = (entry.lbl or "").strip() or default_lbl
            if lbl is None and entry.annotations:
                lbl = entry.annotations[0].lbl.strip()
            data = ctx.decode_input(entry.url, where, allow_base64=False)
            if boxes:
                check_boxes_on_image(boxes, image_dimensions(data), where + ".annotations")
            url = entry.url.strip()
            source_url = url if url[:8].lower().startswith(("http://", "https://")) else None
            prepared.append((lbl or UNLABELED, data, boxes, source_url))
        added = [
            svc.add_sample(p.owner, detail.model.id, lbl, data, boxes=boxes, source_url=source_url)
            for lbl, data, boxes, source_url in prepared
        ]
        return ok(f"{len(added)} image(s) added", [image_entry(s) for s in added], 201)

    @route("GET", PREFIX + "/image/", summary="List a project's images with their annotations")
    def list_images(project_id: str, request: Request, x_aug_key: str | None = Header(None)) -> Response:
        p = auth(x_aug_key, request, PERM_VIEW)
        detail = project_detail(p, project_id)
        return ok("Images", [image_entry(s) for c in detail.classes for s in c.samples])

    @route("DELETE", PREFIX + "/image/", summary="Delete images from a project")
    def delete_images(body: DeleteImagesBody, request: Request, x_aug_key: str | None = Header(None)) -> Response:
        p = auth(x_aug_key, request, PERM_EDIT)
        detail = project_detail(p, body.project_id)
        if not body.images:
            raise ApiError(400, "images: must hold at least one image id")
        own = {s.id for c in detail.classes for s in c.samples}
        ids = [parse_id(v, f"images[{i}]") for i, v in enumerate(body.images)]
        for i, image_id in enumerate(ids):
            if image_id not in own:
                raise ApiError(404, f"images[{i}]: image {image_id} is not in project {detail.model.id}")
        for image_id in dict.fromkeys(ids):
            svc.delete_sample(p.owner, image_id)
        return ok(f"{len(set(ids))} image(s) deleted", {"images": list(dict.fromkeys(ids))})

    @route("POST", PREFIX + "/annotation/", summary="modelsync extension: set an image's annotations (boxes)")
    def set_annotations(body: SetAnnotationsBody, request: Request, x_aug_key: str | None = Header(None)) -> Response:
        from reconciler.local.errors import NotFoundError

        p = auth(x_aug_key, request, PERM_EDIT)
        pid = None
        if body.project_id is not None and body.project_id != "":
            pid = project_record(p, body.project_id).id
        image_id = parse_id(body.image_id, "image_id")
        try:
            sample = svc.get_sample(p.owner, image_id)
        except NotFoundError:
            sample = None
        if pid is not None and (sample is None or sample.model_id != pid):
            raise ApiError(404, f"image_id: image {image_id} is not in project {pid}")
        if sample is None:
            raise ApiError(404, f"image_id: image {image_id} not found")
        p.check_project(sample.model_id)  # the project the image names
        boxes = boxes_of(body.annotations, "annotations")
        if boxes:
            check_boxes_on_image(boxes, image_dimensions(svc.read_blob(sample.digest)), "annotations")
        rec = svc.update_sample(p.owner, image_id, boxes=boxes)
        return ok("Annotations saved", image_entry(rec))

    # -- train and predict ----------------------------------------------------------
    @route("POST", PREFIX + "/model/train/", status_code=201, summary="Train a model; answers its metrics")
    def train(body: TrainBody, request: Request, x_aug_key: str | None = Header(None)) -> Response:
        from reconciler.local.errors import InvalidInputError, StateError

        p = auth(x_aug_key, request, PERM_TRAIN)
        model_type = body.model_type.strip().lower()
        if model_type not in MODEL_TYPES:
            raise ApiError(400, f"model_type: expected small, medium or large, got {body.model_type!r}")
        detail = project_detail(p, body.project_id)
        pid = detail.model.id
        save_name = (body.model_save_name or "").strip() or None
        base = (body.model_load_name or "").strip() or None
        if save_name is not None and _save_name_taken(p.owner, save_name):
            raise ApiError(409, f"model_save_name: a model named {save_name!r} already exists")
        if base is not None and p.project_scoped:
            _check_base_in_scope(p, pid, base)
        try:
            job = svc.start_training(p.owner, pid, model_type=model_type, base=base, save_name=save_name)
        except StateError as exc:
            raise ApiError(400, str(exc)) from None
        except InvalidInputError as exc:
            text = str(exc)
            if text.startswith("base:"):
                text = "model_load_name:" + text.removeprefix("base:")
            raise ApiError(400, text) from None
        job = svc.wait_training(p.owner, job.id, timeout=TRAIN_WAIT_SECONDS)
        if job.state == "failed":
            raise ApiError(400, f"training failed: {job.error or 'no reason given'}")
        if job.state == "canceled":
            raise ApiError(409, "training was canceled")
        if job.state != "trained" or job.version is None:
            data = {"model_name": save_name, "project_id": pid, "status": job.state, "progress": job.progress}
            return ok("Training is still running", data, 202)
        v = svc.resolve_version(p.owner, pid, job.version)
        data = {"project_id": pid, **saved_model_entry(v)}
        return ok("Model trained", data, 201)

    def _check_base_in_scope(p: Principal, pid: int, base: str) -> None:
        """A project-limited key may fine-tune only from a model saved in one of its projects."""
        from reconciler.local.errors import NotFoundError

        if any(v.version == base for v in svc.list_versions(p.owner, pid)):
            return  # a version of this project
        try:
            found = svc.find_version_by_save_name(p.owner, base)
        except NotFoundError:
            return  # the service answers "no such model" itself
        if not p.sees_project(found.model_id):
            raise ApiError(403, f"model_load_name: {base!r} was saved in a project this API key has no access to",
                           code="forbidden")

    def _save_name_taken(owner: str, name: str) -> bool:
        from reconciler.local.errors import NotFoundError

        try:
            svc.find_version_by_save_name(owner, name)
        except NotFoundError:
            return False
        return True

    @route("POST", PREFIX + "/model/predict/", summary="Predict annotations on images")
    def predict(body: PredictBody, request: Request, x_aug_key: str | None = Header(None)) -> Response:
        p = auth(x_aug_key, request, PERM_RUN)
        detail = project_detail(p, body.app_id, "app_id")
        pid = detail.model.id
        if not body.image_urls:
            raise ApiError(400, "image_urls: must hold at least one image URL")
        if len(body.image_urls) > MAX_IMAGES_PER_CALL:
            raise ApiError(400, f"image_urls: at most {MAX_IMAGES_PER_CALL} images a call, got {len(body.image_urls)}")
        conf = _threshold(body.confidence_thresh, "confidence_thresh")
        overlap = _threshold(body.overlap_thresh, "overlap_thresh")
        name = body.model_name.strip()
        if not name:
            raise ApiError(400, "model_name: must not be empty")
        version = svc.resolve_version(p.owner, pid, name)
        keys = [u.strip() for u in body.image_urls]
        images = [ctx.decode_input(u, f"image_urls[{i}]", allow_base64=False) for i, u in enumerate(keys)]
        preds = svc.predict(p.owner, pid, images, version=version.version, confidence_thresh=conf,
                            overlap_thresh=overlap)
        annotations: dict[str, list[dict[str, Any]]] = {}
        for key, pred in zip(keys, preds, strict=True):
            annotations[key] = _prediction_annotations(pred, conf)
        return JSONResponse(
            {
                "status": True,
                "annotations": annotations,
                "model_name": version.save_name or version.version,
                "model_version": version.version,
            }
        )

    return r


def _prediction_annotations(pred: dict[str, Any], conf: float | None) -> list[dict[str, Any]]:
    """One prediction -> Autogon's [{lbl, conf, bbx}]: its boxes, or its label for a classifier."""
    boxes = pred.get("boxes") or []
    if boxes:
        return [{**annotation_of(b), "conf": round(float(b["confidence"]), 6)} for b in boxes]
    label = pred.get("label")
    confidence = float(pred.get("confidence") or 0.0)
    if label is None or (conf is not None and confidence < conf):
        return []
    return [{"lbl": label, "conf": round(confidence, 6), "bbx": None}]
