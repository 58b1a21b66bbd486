"""The Scenario dialect: the ``train`` tool's actions, plus the model endpoints it lacks.

The tool (one endpoint, ``POST /scenario/train``) takes exactly the documented arguments:
action (upload_images | update_image | delete_image | set_pairs | configure | start | stop),
model_id, training_image_id, images, image_data, config, team_id, project_id,
response_format (json | markdown). Vendor facts followed: at most 10 images a call (400),
the same image twice refused (400 "already a training image of this model"), starting a
training model refused (400 "Model is already training"), model status one of new,
training, trained, failed, training-canceled; stop cancels.

The tool has no create/list/read, so modelsync adds (documented in docs/WIRE.md):
``POST /scenario/models``, ``GET /scenario/models``, ``GET /scenario/models/{model_id}``,
``DELETE /scenario/models/{model_id}``. Model ids are ``model_<n>``, training image ids
``ti_<n>``. Auth: ``Authorization: Bearer <key>``. Errors: ``{"error": message}`` with the
HTTP status.

Training config (``configure``): every field Scenario's train tool is seen to take is
accepted with its type: ``learningRate`` (number > 0), ``maxTrainSteps``, ``nbEpochs``,
``nbRepeats``, ``batchSize`` (integers >= 1); the documented example's ``steps`` and the
trainer's own names (steps, learning_rate, batch_size, l2, holdout, seed) pass too.
learningRate, maxTrainSteps and batchSize are the trainer's learning_rate, steps and
batch_size. nbEpochs and nbRepeats are stored as given and become steps when a run starts,
when the number of training images is known: an epoch is one pass over the training images,
each seen nbRepeats times, so a run takes nbEpochs x ceil(images x nbRepeats / batch) steps
(batch: batchSize, or all the images at once when it is unset; nbEpochs and nbRepeats
default to 1), at most maxTrainSteps when that is set too. The model's ``parameters`` show
what was configured; each version's ``parameters`` what its run used.

Training a set without classes (``start``): Scenario trains image generators (e.g. a LoRA
on a set of captioned images), and its documented flow, upload_images -> configure -> start,
gives no classes: those images go into one class, ``default``. The embedded trainer learns
to tell classes apart and cannot train a generator, so refusing the flow would be honest
but would break Scenario's own example, and training a classifier on one class would learn
nothing. So when every training image is in ``default`` (and there are at least two), start
trains a one-class model instead (reconciler.local.trainer: ``allow_one_class``): the set's
profile in feature space, which scores how much an image looks like the set (a coarse
look-alike score: it tells the set's look from other looks, not its content). It is fitted
in closed form (``steps`` 0 in its metrics), and its metrics hold only what can be measured
without images from outside the set: the share of held-out images of the set it accepts
(``recall``) and their mean confidence, no accuracy. The status then moves new -> training
-> trained as for any model. Images given classes through ``image_data.className`` (a
modelsync extension) are a classifier's data: those need two classes, as before.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from reconciler.local.serve.auth import PERM_EDIT, PERM_TRAIN, PERM_VIEW
from reconciler.local.serve.context import ApiError, Dialect, Principal, ServeContext

MAX_IMAGES_PER_CALL = 10
DEFAULT_CLASS = "default"
DUPLICATE_MESSAGE = "already a training image of this model"
ALREADY_TRAINING = "Model is already training"

# Scenario's training parameters -> the trainer's config keys. The trainer's own names pass too.
PARAM_TO_TRAINER = {
    "learningRate": "learning_rate",
    "maxTrainSteps": "steps",
    "batchSize": "batch_size",
    "steps": "steps",
    "learning_rate": "learning_rate",
    "batch_size": "batch_size",
    "l2": "l2",
    "holdout": "holdout",
    "seed": "seed",
}
TRAINER_TO_PARAM = {"learning_rate": "learningRate", "steps": "maxTrainSteps", "batch_size": "batchSize"}
# Scenario's parameters the trainer has no key for: stored as given, turned into steps at start.
RUN_PARAMS = ("nbEpochs", "nbRepeats")


def error_response(err: ApiError) -> Response:
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)


DIALECT = Dialect(name="scenario", prefixes=("/scenario/",), error_response=error_response)

Action = Literal["upload_images", "update_image", "delete_image", "set_pairs", "configure", "start", "stop"]


class TrainArgs(BaseModel):
    """The train tool's arguments, as documented."""

    model_config = ConfigDict(extra="ignore")
    action: Action = Field(description="Training action")
    model_id: str = Field(min_length=1, max_length=100, description="Model ID (required for all training actions)")
    training_image_id: str | None = Field(default=None, max_length=100, description="for update_image/delete_image")
    images: list[str] | None = Field(default=None, description="Image URLs to upload (for upload_images)")
    image_data: dict[str, Any] | None = Field(
        default=None, description="Metadata for update_image, or pair mappings for set_pairs"
    )
    config: Any = Field(default=None, description="Training configuration (for configure)")
    team_id: str | None = Field(default=None, max_length=100)
    project_id: str | None = Field(default=None, max_length=100)
    response_format: Literal["json", "markdown"] = "json"


class CreateModelBody(BaseModel):
    """modelsync extension: the tool cannot create models."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=200)
    type: str = Field(default="vision", max_length=64)
    purpose: str = Field(default="classification", max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=50)
    team_id: str | None = Field(default=None, max_length=100)
    project_id: str | None = Field(default=None, max_length=100)


# --------------------------------------------------------------------------- ids and shapes

_MODEL_ID = re.compile(r"^model_(\d{1,18})$")
_IMAGE_ID = re.compile(r"^(?:ti_)?(\d{1,18})$")


def model_ref(model_id: int) -> str:
    return f"model_{model_id}"


def image_ref(sample_id: int) -> str:
    return f"ti_{sample_id}"


def parse_model_id(value: str) -> int:
    m = _MODEL_ID.match(value.strip())
    if not m:
        raise ApiError(404, f"model_id {value!r}: no such model (ids look like model_<n>)")
    return int(m.group(1))


def parse_image_id(value: str | None, field: str = "training_image_id") -> int:
    if value is None or not str(value).strip():
        raise ApiError(400, f"{field}: required for this action")
    m = _IMAGE_ID.match(str(value).strip())
    if not m:
        raise ApiError(404, f"{field} {value!r}: no such training image (ids look like ti_<n>)")
    return int(m.group(1))


def model_status(model: Any) -> str:
    """The service's training state -> Scenario's model status."""
    state = model.training_state
    if state in ("queued", "training"):
        return "training"
    if state == "failed":
        return "failed"
    if state == "canceled":
        return "training-canceled"
    if state == "trained" or model.trained:
        return "trained"
    return "new"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if ts else None


def parameters_view(config: dict[str, Any] | None) -> dict[str, Any]:
    """The trainer's config as Scenario's parameters (learningRate, maxTrainSteps, ...)."""
    return {TRAINER_TO_PARAM.get(k, k): v for k, v in (config or {}).items()}


def trainer_config(raw: Any) -> dict[str, Any]:
    """Scenario parameters (or the spec's names) -> the config to store; 400 naming the field.

    The trainer's keys come out under the trainer's names, nbEpochs/nbRepeats as given (see
    the module docstring). Values are checked now (the trainer's own rules for its keys), so
    a bad one fails at configure rather than later in a training run.
    """
    from reconciler.local.trainer import TrainingError, parse_config
    from reconciler.local.trainer.config import MAX_STEPS

    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ApiError(400, "config: expected an object of training parameters, got a non-JSON string") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "config: required for configure (an object such as {\"maxTrainSteps\": 1200}; {} resets)")
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # trainer key -> the name the caller used
    run: dict[str, int] = {}
    for key, value in raw.items():
        if key in RUN_PARAMS:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STEPS:
                raise ApiError(400, f"config.{key}: expected a whole number from 1 to {MAX_STEPS}, got {value!r}")
            run[key] = value
            continue
        target = PARAM_TO_TRAINER.get(key)
        if target is None:
            known = ", ".join(sorted({*PARAM_TO_TRAINER, *RUN_PARAMS}))
            raise ApiError(400, f"config.{key}: unknown training parameter (known: {known})")
        if target in out and out[target] != value:
            raise ApiError(400, f"config.{key}: conflicts with config.{given[target]}")
        out[target] = value
        given[target] = key
    try:
        parse_config(out)
    except TrainingError as exc:
        text = str(exc)
        for target, key in given.items():
            text = text.replace(f"training.config.{target}:", f"config.{key}:")
        raise ApiError(400, text) from None
    passes = run.get("nbEpochs", 1) * run.get("nbRepeats", 1)
    if passes > MAX_STEPS and "steps" not in out:  # at least a step a pass, whatever the number of images
        raise ApiError(400, f"config: nbEpochs x nbRepeats is {passes}, over the trainer's limit of {MAX_STEPS} steps")
    return {**out, **run}


def run_config(stored: dict[str, Any] | None, num_images: int) -> dict[str, Any]:
    """A model's stored config -> the trainer's config for a run on ``num_images`` images:
    nbEpochs/nbRepeats become steps (see the module docstring). 400 when over the trainer's limit."""
    from reconciler.local.trainer.config import MAX_STEPS

    stored = dict(stored or {})
    config = {k: v for k, v in stored.items() if k not in RUN_PARAMS}
    if not any(k in stored for k in RUN_PARAMS) or num_images <= 0:
        return config
    epochs, repeats = int(stored.get("nbEpochs", 1)), int(stored.get("nbRepeats", 1))
    batch = min(int(config.get("batch_size") or num_images), num_images)
    steps = epochs * math.ceil(num_images * repeats / batch)
    if "steps" in config:
        steps = min(steps, int(config["steps"]))  # maxTrainSteps: the most a run takes
    if steps > MAX_STEPS:
        raise ApiError(
            400,
            f"config: nbEpochs {epochs} x nbRepeats {repeats} over {num_images} training images in batches of {batch} "
            f"is {steps} steps, over the trainer's limit of {MAX_STEPS}; lower them or set maxTrainSteps",
        )
    config["steps"] = steps
    return config


def to_markdown(title: str, body: dict[str, Any]) -> str:
    """The markdown form of an answer: a heading and one bullet per field."""
    lines = [f"## {title}", ""]
    for key, value in body.items():
        if isinstance(value, list):
            shown = ", ".join(str(v) for v in value) if value else "(none)"
        elif isinstance(value, dict):
            shown = ", ".join(f"{k}={v}" for k, v in value.items()) if value else "(none)"
        else:
            shown = "(none)" if value is None else str(value)
        lines.append(f"- **{key}**: {shown}")
    return "\n".join(lines) + "\n"


class _ModelLocks:
    """One lock per model, so the duplicate check and the insert of an upload are atomic."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, int], threading.Lock] = {}

    def get(self, owner: str, model_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((owner, model_id), threading.Lock())


# --------------------------------------------------------------------------- router


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter(tags=["scenario"])
    svc = ctx.service
    locks = _ModelLocks()

    def auth(authorization: str | None, request: Request, permission: str, team: str | None, project: str | None):
        key = None
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                key = value.strip() or None
        p = ctx.authenticate(key, request, message="Unauthorized: send 'Authorization: Bearer <API key>'")
        p.require(permission)
        p.check_team(team)
        p.check_project(project)
        return p

    def image_entry(s: Any) -> dict[str, Any]:
        return {
            "id": image_ref(s.id),
            "url": s.source_url,
            "description": s.caption,
            "className": s.class_title,
            "digest": s.digest,
            "size": s.size,
            "width": s.width,
            "height": s.height,
            "createdAt": _iso(s.created_at),
        }

    def model_entry(owner: str, m: Any, detail: Any | None = None) -> dict[str, Any]:
        job = svc.latest_training_job(owner, m.id)
        out: dict[str, Any] = {
            "id": model_ref(m.id),
            "name": m.title,
            "type": m.type,
            "purpose": m.purpose,
            "tags": list(m.tags),
            "status": model_status(m),
            "trainingImagesNumber": m.num_samples,
            "parameters": parameters_view(m.config),
            "createdAt": _iso(m.created_at),
            "trainedAt": _iso(m.trained_at),
            "latestVersion": m.latest_version,
        }
        if job is not None:
            out["trainingJob"] = {
                "id": job.id,
                "state": job.state,
                "progress": job.progress,
                "version": job.version,
                "error": job.error,
            }
        if detail is not None:
            out["trainingImages"] = [image_entry(s) for c in detail.classes for s in c.samples]
            out["versions"] = [
                {
                    "version": v.version,
                    "status": v.status,
                    "trainedAt": _iso(v.trained_at),
                    "metrics": v.metrics,
                    "datasetDigest": v.dataset_digest,
                    "configDigest": v.config_digest,
                    "parameters": parameters_view(v.config),
                }
                for v in svc.list_versions(owner, m.id)
            ]
        return out

    def answer(args: TrainArgs, title: str, body: dict[str, Any], status: int = 200) -> Response:
        if args.response_format == "markdown":
            return PlainTextResponse(to_markdown(title, body), status_code=status, media_type="text/markdown")
        return JSONResponse(body, status_code=status)

    def detail_of(p: Principal, model_id: int) -> Any:
        from reconciler.local.errors import NotFoundError

        try:
            return svc.get_model(p.owner, model_id)
        except NotFoundError:
            raise ApiError(404, f"model_id {model_ref(model_id)!r}: no such model") from None

    def sample_of(p: Principal, model_id: int, image_id: int, field: str = "training_image_id") -> Any:
        from reconciler.local.errors import NotFoundError

        detail_of(p, model_id)
        try:
            s = svc.get_sample(p.owner, image_id)
        except NotFoundError:
            s = None
        if s is None or s.model_id != model_id:
            raise ApiError(404, f"{field} {image_ref(image_id)!r}: not a training image of model {model_ref(model_id)}")
        return s

    # -- the train tool ------------------------------------------------------------
    @r.post("/scenario/train", summary="The train tool: upload_images, update_image, delete_image, set_pairs, "
            "configure, start or stop")
    def train_tool(args: TrainArgs, request: Request, authorization: str | None = Header(None)) -> Response:
        permission = PERM_TRAIN if args.action in ("start", "stop") else PERM_EDIT
        p = auth(authorization, request, permission, args.team_id, args.project_id)
        model_id = parse_model_id(args.model_id)
        handler = {
            "upload_images": upload_images,
            "update_image": update_image,
            "delete_image": delete_image,
            "set_pairs": set_pairs,
            "configure": configure,
            "start": start,
            "stop": stop,
        }[args.action]
        return handler(p, model_id, args)

    def upload_images(p: Principal, model_id: int, args: TrainArgs) -> Response:
        images = args.images or []
        if not images:
            raise ApiError(400, "images: required for upload_images (a list of image URLs)")
        if len(images) > MAX_IMAGES_PER_CALL:
            raise ApiError(400, f"images: at most {MAX_IMAGES_PER_CALL} images a call, got {len(images)}")
        meta = args.image_data or {}
        class_title = meta.get("className", DEFAULT_CLASS)
        if not isinstance(class_title, str) or not class_title.strip() or len(class_title) > 200:
            raise ApiError(400, f"image_data.className: expected a non-empty name, got {class_title!r}")
        description = meta.get("description")
        if description is not None and not isinstance(description, str):
            raise ApiError(400, f"image_data.description: expected text, got {description!r}")
        detail_of(p, model_id)  # 404 before fetching anything
        fetched: list[tuple[str, bytes]] = []
        for i, url in enumerate(images):
            if not isinstance(url, str) or not url.strip():
                raise ApiError(400, f"images[{i}]: expected an image URL, got {url!r}")
            fetched.append((url.strip(), ctx.decode_input(url, f"images[{i}]", allow_base64=False)))
        with locks.get(p.owner, model_id):
            detail = detail_of(p, model_id)
            have = {s.digest: s for c in detail.classes for s in c.samples}
            seen: dict[str, int] = {}
            for i, (_url, data) in enumerate(fetched):
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                if digest in have:
                    raise ApiError(400, f"images[{i}]: {DUPLICATE_MESSAGE} ({image_ref(have[digest].id)})")
                if digest in seen:
                    raise ApiError(400, f"images[{i}]: same image as images[{seen[digest]}]; {DUPLICATE_MESSAGE}")
                seen[digest] = i
            ids = []
            for url, data in fetched:
                source_url = url if url[:8].lower().startswith(("http://", "https://")) else None
                rec = svc.add_sample(
                    p.owner, model_id, class_title.strip(), data, caption=description, source_url=source_url
                )
                ids.append(image_ref(rec.id))
        body = {"status": "uploaded", "count": len(ids), "training_image_ids": ids}
        return answer(args, "Training images uploaded", body)

    def update_image(p: Principal, model_id: int, args: TrainArgs) -> Response:
        image_id = parse_image_id(args.training_image_id)
        data = args.image_data
        if not isinstance(data, dict) or "description" not in data:
            raise ApiError(400, "image_data: required for update_image, e.g. {\"description\": \"a red car\"}")
        description = data["description"]
        if description is not None and not isinstance(description, str):
            raise ApiError(400, f"image_data.description: expected text, got {description!r}")
        sample_of(p, model_id, image_id)
        rec = svc.update_sample(p.owner, image_id, caption=description or None)
        body = {"status": "updated", "training_image_id": image_ref(rec.id), "description": rec.caption}
        return answer(args, "Training image updated", body)

    def delete_image(p: Principal, model_id: int, args: TrainArgs) -> Response:
        image_id = parse_image_id(args.training_image_id)
        sample_of(p, model_id, image_id)
        svc.delete_sample(p.owner, image_id)
        return answer(args, "Training image deleted", {"status": "deleted", "training_image_id": image_ref(image_id)})

    def set_pairs(p: Principal, model_id: int, args: TrainArgs) -> Response:
        pairs = args.image_data
        if not isinstance(pairs, dict) or not pairs:
            raise ApiError(400, "image_data: required for set_pairs, a mapping {training_image_id: description}")
        detail = detail_of(p, model_id)
        own = {s.id for c in detail.classes for s in c.samples}
        parsed: list[tuple[int, str | None]] = []
        for key, text in pairs.items():
            image_id = parse_image_id(key, f"image_data[{key!r}]")
            if image_id not in own:
                raise ApiError(404, f"image_data[{key!r}]: not a training image of model {model_ref(model_id)}")
            if text is not None and not isinstance(text, str):
                raise ApiError(400, f"image_data[{key!r}]: expected a description (text), got {text!r}")
            parsed.append((image_id, text or None))
        for image_id, text in parsed:
            svc.update_sample(p.owner, image_id, caption=text)
        return answer(args, "Pairs set", {"status": "paired", "count": len(parsed)})

    def configure(p: Principal, model_id: int, args: TrainArgs) -> Response:
        config = trainer_config(args.config)
        detail_of(p, model_id)
        # nbEpochs/nbRepeats are this dialect's to turn into steps at start: stored as given
        svc.configure(p.owner, model_id, config, checked=not any(k in config for k in RUN_PARAMS))
        body = {"status": "configured", "model_id": model_ref(model_id), "config": parameters_view(config)}
        return answer(args, "Training configured", body)

    def start(p: Principal, model_id: int, args: TrainArgs) -> Response:
        from reconciler.local.errors import ConflictError, StateError

        detail = detail_of(p, model_id)
        n = detail.model.num_samples
        if n == 0:
            raise ApiError(400, f"model {model_ref(model_id)} has no training images; upload some first")
        classes = [c.title for c in detail.classes if c.samples]
        image_set = classes == [DEFAULT_CLASS] and detail.model.purpose != "detection"  # see the module docstring
        if image_set and n < 2:
            raise ApiError(400, f"model {model_ref(model_id)} has 1 training image; training on a set of images "
                           "needs at least 2", code="state")
        config = run_config(detail.model.config, n)
        try:
            job = svc.start_training(p.owner, model_id, config=config, allow_one_class=image_set)
        except ConflictError:
            raise ApiError(400, ALREADY_TRAINING, code="state") from None
        except StateError as exc:
            raise ApiError(400, str(exc), code="state") from None
        body = {"status": "training", "model_id": model_ref(model_id), "job_id": job.id}
        return answer(args, "Training started", body)

    def stop(p: Principal, model_id: int, args: TrainArgs) -> Response:
        m = detail_of(p, model_id).model
        if m.training_state not in ("queued", "training"):
            raise ApiError(400, f"Model is not training (status: {model_status(m)})", code="state")
        job = svc.stop_training(p.owner, model_id)
        body = {"status": "training-canceled", "model_id": model_ref(model_id), "job_id": job.id}
        return answer(args, "Training stopped", body)

    # -- modelsync extensions: models --------------------------------------------------
    @r.post("/scenario/models", status_code=201, summary="modelsync extension: create a model")
    def create_model(body: CreateModelBody, request: Request, authorization: str | None = Header(None)) -> Response:
        p = auth(authorization, request, PERM_EDIT, body.team_id, body.project_id)
        name = body.name.strip()
        if not name:
            raise ApiError(400, "name: must not be empty")
        tags = tuple(t.strip() for t in body.tags if t.strip())
        rec = svc.create_model(p.owner, name, type=body.type or "vision", purpose=body.purpose or "classification",
                               tags=tags)
        return JSONResponse({"model": model_entry(p.owner, rec)}, status_code=201)

    @r.get("/scenario/models", summary="modelsync extension: list models")
    def list_models(
        request: Request,
        authorization: str | None = Header(None),
        team_id: str | None = None,
        project_id: str | None = None,
    ) -> Response:
        p = auth(authorization, request, PERM_VIEW, team_id, project_id)
        models = sorted(svc.list_models(p.owner), key=lambda m: m.id)
        return JSONResponse({"models": [model_entry(p.owner, m) for m in models]})

    @r.get("/scenario/models/{model_id}", summary="modelsync extension: one model with its training images")
    def get_model(
        model_id: str,
        request: Request,
        authorization: str | None = Header(None),
        team_id: str | None = None,
        project_id: str | None = None,
    ) -> Response:
        p = auth(authorization, request, PERM_VIEW, team_id, project_id)
        detail = detail_of(p, parse_model_id(model_id))
        return JSONResponse({"model": model_entry(p.owner, detail.model, detail)})

    @r.delete("/scenario/models/{model_id}", summary="modelsync extension: delete a model")
    def delete_model(
        model_id: str,
        request: Request,
        authorization: str | None = Header(None),
        team_id: str | None = None,
        project_id: str | None = None,
    ) -> Response:
        p = auth(authorization, request, PERM_EDIT, team_id, project_id)
        mid = parse_model_id(model_id)
        detail_of(p, mid)
        svc.delete_model(p.owner, mid)
        return JSONResponse({"status": "deleted", "model_id": model_ref(mid)})

    return r
