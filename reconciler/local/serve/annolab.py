"""The AnnoLab dialect: asynchronous batch inference on source files, under /v1/.

Followed from AnnoLab's docs: ``Authorization: Api-Key XXXX``; ``POST /v1/infer/batch``
{projectIdentifier (id or unique name), modelIdentifier (id or unique name), sourceIds,
outputLayerIdentifier (name or id), groupName} answers 201 with exactly
{inferenceJobId, status "Queued", projectName, projectId, outputLayerName, outputLayerId,
sourceIds}; ``GET /v1/infer/batch/{job_id}`` answers {inferenceJobId, status, projectId,
sourceIds} with status Queued, Running, Finished or Errored. Running a model needs the
"Model Run" permission on the project. Errors are ``{"message": ...}`` with a non-2xx status
(404 for a job that is missing or not the caller's).

modelsync extensions (documented in docs/WIRE.md), named like AnnoLab's SDK endpoints:
``POST /v1/project/create``, ``GET /v1/project/{id}``, ``GET /v1/project/{group}/{name}``,
``POST /v1/source/create-image`` (a source from an image URL, data: URI or base64),
``GET /v1/source/{id}``, ``GET /v1/models`` and ``GET /v1/layer/{layer_id}/annotations``
(the predictions jobs wrote into an output layer). The status answer also carries
``progress``, ``error``, ``outputLayerName`` and ``outputLayerId``; the batch request may
name ``modelVersion``.

AnnoLab's projects and layers have integer ids the embedded service does not keep; this
dialect keeps them (and each job's project, layer and source ids) in ``annolab.db`` next
to the service's database.

An API key limited to a list of projects (``projects`` in the keys file: ids or names)
reaches those projects only, and creates only projects named in its list.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from reconciler.local.serve.auth import PERM_RUN, PERM_UPLOAD, PERM_VIEW
from reconciler.local.serve.context import ApiError, Dialect, Principal, ServeContext, api_error_from_local, parse_id

DEFAULT_DIRECTORY = "Uploads"
MAX_SOURCES_PER_JOB = 1000
Ident = int | str


def error_response(err: ApiError) -> Response:
    return JSONResponse({"message": err.message}, status_code=err.status, headers=err.headers)


DIALECT = Dialect(name="annolab", prefixes=("/v1/",), error_response=error_response)


class InferBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    projectIdentifier: Ident = Field(description="id or unique name of the project holding the sources")  # noqa: N815
    modelIdentifier: Ident = Field(description="id or unique name of the model to run")  # noqa: N815
    sourceIds: list[Ident] = Field(description="ids of the sources to run the model on")  # noqa: N815
    outputLayerIdentifier: Ident = Field(description="layer the predictions are written to (name or id)")  # noqa: N815
    groupName: str = Field(max_length=200, description="name of the group the user belongs to")  # noqa: N815
    modelVersion: str | None = Field(  # noqa: N815
        default=None, max_length=200, description="modelsync extension: the version to run (default: latest)"
    )


class CreateProjectBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    groupName: str = Field(max_length=200)  # noqa: N815
    projectName: str = Field(max_length=200)  # noqa: N815


class CreateImageSourceBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    projectIdentifier: Ident  # noqa: N815
    groupName: str = Field(max_length=200)  # noqa: N815
    sourceName: str = Field(max_length=1000)  # noqa: N815
    image: str = Field(description="the image: an http(s) URL, a data: URI or base64")
    directoryIdentifier: str | None = Field(default=None, max_length=200)  # noqa: N815


def as_id(ident: Ident) -> int | None:
    """An identifier that looks like an id (an int, or ASCII digits) -> the int; else None."""
    if isinstance(ident, bool):
        return None
    if isinstance(ident, int):
        return ident if 0 <= ident < 10**18 else -1
    text = str(ident).strip()
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


# --------------------------------------------------------------------------- registry


class Registry:
    """AnnoLab's ids for projects, layers and jobs (the service keeps project names only)."""

    SCHEMA = (
        """CREATE TABLE IF NOT EXISTS projects (
            id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, group_name TEXT NOT NULL,
            name TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (owner, name))""",
        """CREATE TABLE IF NOT EXISTS layers (
            id INTEGER PRIMARY KEY AUTOINCREMENT, project_id INTEGER NOT NULL, name TEXT NOT NULL,
            created_at REAL NOT NULL, UNIQUE (project_id, name))""",
        """CREATE TABLE IF NOT EXISTS jobs (
            job_id INTEGER PRIMARY KEY, owner TEXT NOT NULL, project_id INTEGER NOT NULL,
            layer_id INTEGER NOT NULL, source_ids TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS jobs_layer ON jobs(layer_id, job_id)",
    )

    def __init__(self, path: Path):
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        with self.tx() as c:
            for stmt in self.SCHEMA:
                c.execute(stmt)

    @contextmanager
    def tx(self):
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- projects ------------------------------------------------------------------
    def create_project(self, owner: str, group: str, name: str) -> tuple[int, str, str, bool]:
        """(id, group, name, created); an existing name is returned as is (created False)."""
        with self.tx() as c:
            row = c.execute("SELECT id, group_name, name FROM projects WHERE owner = ? AND name = ?",
                            (owner, name)).fetchone()
            if row is not None:
                return (*row, False)
            pid = c.execute("INSERT INTO projects (owner, group_name, name, created_at) VALUES (?, ?, ?, ?)",
                            (owner, group, name, time.time())).lastrowid
            return pid, group, name, True

    def find_project(self, owner: str, ident: Ident) -> tuple[int, str, str] | None:
        """A project by id (int or digit string) or by name: (id, group, name)."""
        number = as_id(ident)
        with self._lock:
            if number is not None:
                row = self._conn.execute("SELECT id, group_name, name FROM projects WHERE owner = ? AND id = ?",
                                         (owner, number)).fetchone()
                if row is not None or isinstance(ident, int):
                    return row
            return self._conn.execute("SELECT id, group_name, name FROM projects WHERE owner = ? AND name = ?",
                                      (owner, str(ident).strip())).fetchone()

    def project_by_id(self, owner: str, project_id: int) -> tuple[int, str, str] | None:
        with self._lock:
            return self._conn.execute("SELECT id, group_name, name FROM projects WHERE owner = ? AND id = ?",
                                      (owner, project_id)).fetchone()

    # -- layers --------------------------------------------------------------------
    def layer(self, project_id: int, ident: Ident) -> tuple[int, str] | None:
        """An existing layer by id or name, or a new one for a name (ids must exist)."""
        text = str(ident).strip()
        number = as_id(ident)
        with self.tx() as c:
            if number is not None:
                row = c.execute("SELECT id, name FROM layers WHERE project_id = ? AND id = ?",
                                (project_id, number)).fetchone()
                if row is not None or isinstance(ident, int):
                    return row
            row = c.execute("SELECT id, name FROM layers WHERE project_id = ? AND name = ?",
                            (project_id, text)).fetchone()
            if row is not None:
                return row
            lid = c.execute("INSERT INTO layers (project_id, name, created_at) VALUES (?, ?, ?)",
                            (project_id, text, time.time())).lastrowid
            return lid, text

    def layer_by_id(self, owner: str, layer_id: int) -> tuple[int, str, int, str] | None:
        """(layer id, layer name, project id, project name) of an owner's layer."""
        with self._lock:
            return self._conn.execute(
                "SELECT l.id, l.name, p.id, p.name FROM layers l JOIN projects p ON p.id = l.project_id "
                "WHERE l.id = ? AND p.owner = ?",
                (layer_id, owner),
            ).fetchone()

    # -- jobs ----------------------------------------------------------------------
    def add_job(self, job_id: int, owner: str, project_id: int, layer_id: int, source_ids: list[int]) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO jobs (job_id, owner, project_id, layer_id, source_ids) "
                      "VALUES (?, ?, ?, ?, ?)",
                      (job_id, owner, project_id, layer_id, ",".join(map(str, source_ids))))

    def job(self, owner: str, job_id: int) -> tuple[int, int, list[int]] | None:
        """(project id, layer id, source ids) of an owner's job."""
        with self._lock:
            row = self._conn.execute("SELECT project_id, layer_id, source_ids FROM jobs WHERE owner = ? AND job_id = ?",
                                     (owner, job_id)).fetchone()
        if row is None:
            return None
        return row[0], row[1], [int(x) for x in row[2].split(",") if x]

    def layer_jobs(self, layer_id: int) -> list[int]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT job_id FROM jobs WHERE layer_id = ? ORDER BY job_id",
                                                     (layer_id,))]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# --------------------------------------------------------------------------- shapes


def _project_json(pid: int, group: str, name: str) -> dict[str, Any]:
    return {"id": pid, "name": name, "groupName": group, "defaultDirectory": DEFAULT_DIRECTORY}


def _source_json(s: Any, project_id: int) -> dict[str, Any]:
    return {
        "id": s.id,
        "sourceId": s.id,
        "name": s.name,
        "projectId": project_id,
        "projectName": s.project,
        "directory": DEFAULT_DIRECTORY,
        "digest": s.digest,
        "size": s.size,
        "createdAt": s.created_at,
    }


def annotations_of(result: dict[str, Any], job_id: int, layer: tuple[int, str], names: dict[int, str]) -> list[dict]:
    """One prediction -> AnnoLab-style annotations: one per box, or one classification."""
    try:
        source_id = int(result["input"])
    except (KeyError, TypeError, ValueError):
        return []
    head = {
        "sourceId": source_id,
        "sourceName": names.get(source_id),
        "inferenceJobId": job_id,
        "layerId": layer[0],
        "layer": layer[1],
    }
    boxes = result.get("boxes") or []
    if boxes:
        return [
            {
                **head,
                "type": b["label"],
                "value": b["label"],
                "confidence": b.get("confidence"),
                "bbox": [b["x"], b["y"], b["w"], b["h"]],
            }
            for b in boxes
        ]
    if result.get("label") is None:
        return []
    return [
        {
            **head,
            "type": result["label"],
            "value": result["label"],
            "confidence": result.get("confidence"),
            "scores": result.get("scores") or {},
            "isDocumentClassification": True,
        }
    ]


# --------------------------------------------------------------------------- router


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter(tags=["annolab"])
    svc = ctx.service
    registry = Registry(Path(svc.root) / "annolab.db")

    def auth(authorization: str | None, request: Request) -> Principal:
        key = None
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "api-key":
                key = value.strip() or None
        return ctx.authenticate(key, request, message="Invalid API key: send 'Authorization: Api-Key <key>'")

    def project_allowed(p: Principal, pid: int, name: str) -> bool:
        allowed = p.info.project_ids
        return allowed is None or str(pid) in allowed or name in allowed

    def require_on_project(p: Principal, permission: str, pid: int, name: str) -> None:
        if permission not in p.info.permissions or not project_allowed(p, pid, name):
            raise ApiError(403, f"this API key lacks the '{permission}' permission on project {name!r}",
                           code="forbidden")

    def project(p: Principal, ident: Ident, group: str | None, field: str = "projectIdentifier") -> tuple:
        found = registry.find_project(p.owner, ident)
        if found is None or (group is not None and found[1] != group):
            where = f" in group {group!r}" if group is not None else ""
            raise ApiError(404, f"{field}: no project {ident!r}{where}")
        return found

    def group_of(p: Principal, group: str) -> str:
        g = group.strip()
        if not g:
            raise ApiError(400, "groupName: must not be empty")
        p.check_team(g)
        return g

    def model_id_of(p: Principal, ident: Ident) -> int:
        text = str(ident).strip()
        if not text:
            raise ApiError(400, "modelIdentifier: must not be empty")
        models = svc.list_models(p.owner)
        number = as_id(ident)
        if number is not None:
            for m in models:
                if m.id == number:
                    return m.id
        named = [m.id for m in models if m.title == text]
        if len(named) > 1:
            ids = ", ".join(map(str, named))
            raise ApiError(400, f"modelIdentifier: {len(named)} models are named {text!r} (ids {ids}); use an id")
        if not named:
            raise ApiError(404, f"modelIdentifier: no model {ident!r}")
        return named[0]

    # -- inference (documented) -----------------------------------------------------
    @r.post("/v1/infer/batch", status_code=201, summary="Request inference: a model run on sources (asynchronous)")
    def infer(body: InferBody, request: Request, authorization: str | None = Header(None)) -> Response:
        """The doc answers 201 or "400 The inference could not be started": an unknown model,
        project, layer or source, or a key without 'Model Run' on the project, is that 400
        (401 and 429 stay what they are everywhere)."""
        from reconciler.local.errors import LocalError

        p = auth(authorization, request)
        try:
            return start_inference(p, body)
        except LocalError as exc:
            err = api_error_from_local(exc)
            raise ApiError(400, err.message) if err.status in (403, 404, 409) else err from None
        except ApiError as exc:
            raise ApiError(400, exc.message) if exc.status in (403, 404, 409) else exc from None

    def start_inference(p: Principal, body: InferBody) -> Response:
        from reconciler.local.errors import StateError

        group = group_of(p, body.groupName)
        pid, _, pname = project(p, body.projectIdentifier, group)
        require_on_project(p, PERM_RUN, pid, pname)
        if not body.sourceIds:
            raise ApiError(400, "sourceIds: must hold at least one source id")
        if len(body.sourceIds) > MAX_SOURCES_PER_JOB:
            raise ApiError(400, f"sourceIds: at most {MAX_SOURCES_PER_JOB} sources a job, got {len(body.sourceIds)}")
        model_id = model_id_of(p, body.modelIdentifier)
        source_ids = [parse_id(v, f"sourceIds[{i}]") for i, v in enumerate(body.sourceIds)]
        inputs = []
        for i, sid in enumerate(source_ids):
            src = svc.get_source(p.owner, sid)
            if src.project != pname:
                raise ApiError(400, f"sourceIds[{i}]: source {sid} is not in project {pname!r}")
            inputs.append((str(sid), svc.read_blob(src.digest)))
        if isinstance(body.outputLayerIdentifier, str) and not body.outputLayerIdentifier.strip():
            raise ApiError(400, "outputLayerIdentifier: must not be empty")
        layer = registry.layer(pid, body.outputLayerIdentifier)
        if layer is None:
            raise ApiError(404, f"outputLayerIdentifier: no layer {body.outputLayerIdentifier!r} in project {pname!r}")
        version = (body.modelVersion or "").strip() or None
        try:
            job = svc.start_inference(p.owner, model_id, inputs, version=version, output_layer=layer[1],
                                      project=pname)
        except StateError as exc:
            raise ApiError(400, str(exc)) from None
        registry.add_job(job.id, p.owner, pid, layer[0], source_ids)
        return JSONResponse(
            {
                "inferenceJobId": job.id,
                "status": "Queued",
                "projectName": pname,
                "projectId": pid,
                "outputLayerName": layer[1],
                "outputLayerId": layer[0],
                "sourceIds": source_ids,
            },
            status_code=201,
        )

    @r.get("/v1/infer/batch/{job_id}", summary="Request inference status")
    def infer_status(job_id: str, request: Request, authorization: str | None = Header(None)) -> Response:
        p = auth(authorization, request)
        jid = parse_id(job_id, "jobId")
        meta = registry.job(p.owner, jid)
        if meta is None:
            raise ApiError(404, f"inference job {jid}: not found")
        pid, layer_id, source_ids = meta
        proj = registry.project_by_id(p.owner, pid)
        if proj is None or PERM_RUN not in p.info.permissions or not project_allowed(p, pid, proj[2]):
            raise ApiError(404, f"inference job {jid}: not found (or this API key lacks 'Model Run' on its project)")
        job = svc.get_inference_job(p.owner, jid)
        layer = registry.layer_by_id(p.owner, layer_id)
        return JSONResponse(
            {
                "inferenceJobId": job.id,
                "status": job.state,
                "projectId": pid,
                "sourceIds": source_ids,
                "projectName": proj[2],
                "outputLayerId": layer_id,
                "outputLayerName": layer[1] if layer else job.output_layer,
                "progress": {"done": job.done, "total": job.total},
                "error": job.error,
            }
        )

    # -- output layers (extension) ----------------------------------------------------
    @r.get("/v1/layer/{layer_id}/annotations", summary="modelsync extension: the predictions in an output layer")
    def layer_annotations(
        layer_id: str,
        request: Request,
        authorization: str | None = Header(None),
        sourceIds: str | None = None,  # noqa: N803
        inferenceJobId: int | None = None,  # noqa: N803
    ) -> Response:
        p = auth(authorization, request)
        lid = parse_id(layer_id, "layer_id")
        layer = registry.layer_by_id(p.owner, lid)
        if layer is None:
            raise ApiError(404, f"layer {lid}: not found")
        _, lname, pid, pname = layer
        if PERM_VIEW not in p.info.permissions and PERM_RUN not in p.info.permissions:
            raise ApiError(403, f"this API key lacks the '{PERM_VIEW}' permission on project {pname!r}")
        if not project_allowed(p, pid, pname):
            raise ApiError(403, f"this API key has no access to project {pname!r}")
        wanted: set[int] | None = None
        if sourceIds:
            wanted = {parse_id(x.strip(), "sourceIds") for x in sourceIds.split(",") if x.strip()}
        names = {s.id: s.name for s in svc.list_sources(p.owner, pname)}
        out: list[dict[str, Any]] = []
        for jid in registry.layer_jobs(lid):
            if inferenceJobId is not None and jid != inferenceJobId:
                continue
            job = svc.get_inference_job(p.owner, jid)
            if job.state != "Finished":
                continue
            for result in job.results:
                for a in annotations_of(result, jid, (lid, lname), names):
                    if wanted is None or a["sourceId"] in wanted:
                        out.append(a)
        return JSONResponse({"layerId": lid, "layerName": lname, "projectId": pid, "annotations": out})

    # -- projects, sources, models (extensions) -------------------------------------------
    @r.post("/v1/project/create", status_code=201, summary="modelsync extension: create a project")
    def create_project(body: CreateProjectBody, request: Request, authorization: str | None = Header(None)):
        p = auth(authorization, request)
        p.require(PERM_UPLOAD)
        group = group_of(p, body.groupName)
        name = body.projectName.strip()
        if not name:
            raise ApiError(400, "projectName: must not be empty")
        if as_id(name) is not None:
            raise ApiError(400, f"projectName: must not be only digits (ids are), got {name!r}")
        existing = registry.find_project(p.owner, name)
        if not project_allowed(p, existing[0] if existing else -1, name):
            # the key's project list is fixed when the server starts: a project outside it would be invisible
            raise ApiError(403, f"projectName: this API key is limited to certain projects and {name!r} is not "
                           "one of them", code="forbidden")
        pid, g, n, created = registry.create_project(p.owner, group, name)
        if not created and g != group:
            raise ApiError(409, f"projectName: a project named {name!r} already exists in group {g!r}")
        return JSONResponse(_project_json(pid, g, n), status_code=201 if created else 200)

    @r.get("/v1/project/{project_id}", summary="modelsync extension: a project by id")
    def get_project(project_id: str, request: Request, authorization: str | None = Header(None)) -> Response:
        p = auth(authorization, request)
        found = registry.project_by_id(p.owner, parse_id(project_id, "project_id"))
        if found is None or not project_allowed(p, found[0], found[2]):
            raise ApiError(404, f"project {project_id}: not found")
        return JSONResponse(_project_json(*found))

    @r.get("/v1/project/{group_name}/{project_name}", summary="modelsync extension: a project by group and name")
    def get_project_by_name(
        group_name: str, project_name: str, request: Request, authorization: str | None = Header(None)
    ) -> Response:
        p = auth(authorization, request)
        pid, g, n = project(p, project_name, group_name, "project")
        if not project_allowed(p, pid, n):
            raise ApiError(404, f"project {project_name!r}: not found")
        return JSONResponse(_project_json(pid, g, n))

    @r.post("/v1/source/create-image", status_code=201, summary="modelsync extension: upload an image source")
    def create_image_source(body: CreateImageSourceBody, request: Request, authorization: str | None = Header(None)):
        p = auth(authorization, request)
        group = group_of(p, body.groupName)
        pid, _, pname = project(p, body.projectIdentifier, group)
        require_on_project(p, PERM_UPLOAD, pid, pname)
        name = body.sourceName.strip()
        if not name:
            raise ApiError(400, "sourceName: must not be empty")
        data = ctx.decode_input(body.image, "image")
        src = svc.add_source(p.owner, pname, name, data)
        return JSONResponse(_source_json(src, pid), status_code=201)

    @r.get("/v1/source/{source_id}", summary="modelsync extension: a source by id")
    def get_source(source_id: str, request: Request, authorization: str | None = Header(None)) -> Response:
        p = auth(authorization, request)
        src = svc.get_source(p.owner, parse_id(source_id, "source_id"))
        proj = registry.find_project(p.owner, src.project)
        if proj is None or proj[2] != src.project or not project_allowed(p, proj[0], proj[2]):
            raise ApiError(404, f"source {source_id}: not found")
        return JSONResponse(_source_json(src, proj[0]))

    @r.get("/v1/models", summary="modelsync extension: the models this key can run")
    def list_models(request: Request, authorization: str | None = Header(None)) -> Response:
        p = auth(authorization, request)
        if PERM_VIEW not in p.info.permissions and PERM_RUN not in p.info.permissions:
            raise ApiError(403, f"this API key lacks the '{PERM_VIEW}' permission")
        models = sorted(svc.list_models(p.owner), key=lambda m: m.id)
        return JSONResponse(
            {
                "models": [
                    {
                        "id": m.id,
                        "name": m.title,
                        "type": m.type,
                        "purpose": m.purpose,
                        "trained": m.trained,
                        "latestVersion": m.latest_version,
                        "numSamples": m.num_samples,
                    }
                    for m in models
                ]
            }
        )

    return r
