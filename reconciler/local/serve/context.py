"""What every vendor dialect of `modelsync serve` shares: the service, keys, limits,
URL fetching, and the error type dialects raise.

A dialect module (``astica.py``, ``autogon.py``, ...) exposes ``DIALECT: Dialect``
and ``router(ctx: ServeContext) -> APIRouter``; ``app.create_app`` finds and mounts it.
Endpoints are plain ``def`` functions (FastAPI runs them in its thread pool, and the
LocalService is blocking and thread-safe), except the hot upload endpoints: ``async def``,
with their write in ``ServeContext.run_write``, which keeps it on the event loop unless it
would block.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from reconciler.local.blobs import INLINE_MAX
from reconciler.local.errors import WouldWait
from reconciler.local.serve.auth import KeyInfo, KeyStore, key_id
from reconciler.local.serve.ratelimit import SlidingWindowLimiter
from reconciler.local.serve.urlfetch import InputError, UrlFetcher

if TYPE_CHECKING:
    from reconciler.local.service import LocalService

log = logging.getLogger("modelsync.serve")
T = TypeVar("T")
# The largest image input decoded on the event loop: base64 of an inline blob, and a data: URI's head.
NO_WAIT_INPUT_CHARS = 4 * INLINE_MAX // 3 + 1024


class ApiError(Exception):
    """An error answered in the dialect's own shape.

    ``status`` is the HTTP status a REST API would use (400 bad input, 401 bad key,
    403 permission, 404 not found, 409 conflict, 413 too large, 429, 5xx); the dialect's
    ``error_response`` may answer a different one (astica answers app errors with 200).
    ``code`` is a short machine name: invalid, validation, auth, forbidden, not_found,
    conflict, state, too_large, rate_limited, internal, fault, no_route (unknown path/method),
    storage (the server's disk is full or failing).
    """

    def __init__(self, status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _default_code(status)
        self.headers = headers or {}


class RateLimited(ApiError):
    def __init__(self, retry_after: int, message: str = "rate limit exceeded"):
        super().__init__(429, message, code="rate_limited", headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


def _default_code(status: int) -> str:
    return {
        400: "invalid",
        401: "auth",
        403: "forbidden",
        404: "not_found",
        409: "conflict",
        413: "too_large",
        422: "validation",
        429: "rate_limited",
    }.get(status, "internal" if status >= 500 else "invalid")


def default_error_response(err: ApiError) -> Response:
    """The shape used for paths no dialect owns."""
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)


@dataclass(frozen=True)
class Dialect:
    """A vendor API spoken by the server.

    ``prefixes``: the URL path prefixes it owns (the longest match wins), so errors raised
    before routing (404, 429, 413, injected faults) are still answered in its shape.
    ``error_response``: ApiError -> the vendor's error answer (body shape and HTTP status).
    """

    name: str
    prefixes: tuple[str, ...]
    error_response: Callable[[ApiError], Response]


@dataclass(frozen=True)
class Principal:
    """The caller of one request, after authentication."""

    key_id: str  # non-secret name of the key (sha256 prefix)
    owner: str  # the LocalService owner whose data this key sees
    info: KeyInfo

    def require(self, permission: str) -> None:
        if permission not in self.info.permissions:
            raise ApiError(403, f"this API key lacks the '{permission}' permission", code="forbidden")

    def check_team(self, team_id: str | None) -> None:
        if team_id is not None and self.info.team_id is not None and str(team_id) != self.info.team_id:
            raise ApiError(403, f"team_id {team_id!r}: not a team of this API key", code="forbidden")

    @property
    def project_scoped(self) -> bool:
        """True for a key limited to a list of projects (``projects`` in the keys file)."""
        return self.info.project_ids is not None

    def sees_project(self, project: str | int) -> bool:
        allowed = self.info.project_ids
        return allowed is None or str(project) in allowed

    def check_project(self, project: str | int | None, what: str = "project") -> None:
        if project is not None and not self.sees_project(project):
            raise ApiError(403, f"{what} {project!r}: this API key has no access to it", code="forbidden")

    def check_may_create_projects(self, what: str = "project") -> None:
        """A key limited to a list of projects cannot add one: its list is fixed when the
        server starts (auth.KeyInfo is frozen), so the new project would be invisible to it."""
        if self.project_scoped:
            raise ApiError(
                403, f"this API key is limited to certain {what}s and cannot create a new {what}", code="forbidden"
            )


@dataclass
class ServeContext:
    service: LocalService
    keys: KeyStore
    limiter: SlidingWindowLimiter | None
    fetcher: UrlFetcher
    dialects: list[Dialect] = field(default_factory=list)

    # -- dialect lookup ----------------------------------------------------------
    def dialect_for_path(self, path: str) -> Dialect | None:
        best: tuple[int, Dialect] | None = None
        for d in self.dialects:
            for p in d.prefixes:
                if path.startswith(p) and (best is None or len(p) > best[0]):
                    best = (len(p), d)
        return best[1] if best else None

    def error_response(self, path: str, err: ApiError) -> Response:
        d = self.dialect_for_path(path)
        return d.error_response(err) if d else default_error_response(err)

    # -- auth + limits -----------------------------------------------------------
    def authenticate(
        self,
        key: str | None,
        request: Request | None = None,
        *,
        message: str = "Invalid API key",
        endpoint: str | None = None,
    ) -> Principal:
        """Check the key, then count the request against its limits.

        Raises ApiError(401) for a missing or unknown key and RateLimited when over a limit.
        The per-endpoint bucket is ``endpoint`` when the dialect names one (astica: its host),
        else the route's path template, so polling /jobs/{id} for different ids shares one
        budget.
        """
        info = self.keys.lookup(key.strip() if isinstance(key, str) else None)
        if info is None:
            raise ApiError(401, message, code="auth")
        principal = Principal(key_id=key_id(key.strip()), owner=info.owner, info=info)  # type: ignore[union-attr]
        if self.limiter is not None:
            if endpoint is None:
                endpoint = route_template(request) if request is not None else "/"
            wait = self.limiter.check(principal.key_id, endpoint)
            if wait is not None:
                raise RateLimited(wait)
        return principal

    # -- where a write runs ---------------------------------------------------------
    async def run_write(self, work: Callable[[bool], T]) -> T:
        """``work(False)`` on the event loop; if that raises WouldWait, ``work(True)`` in the
        thread pool.

        A sync handler's hop to the thread pool and back cost serve 1.2 ms of CPU per upload
        on the 2-core VM, more than the upload itself (1.4 ms in all on the loop, 2.7 ms with
        the hop; bench/README.md). ``work`` must check and authenticate nothing (that is done
        once, before) and pass its flag on as ``wait`` to the calls that may block:
        decode_input, LocalService.add_sample. They raise WouldWait before writing anything,
        so the second run starts from a clean slate.
        """
        try:
            result = work(False)
        except WouldWait:
            return await run_in_threadpool(work, True)
        db = self.service.db
        if db.checkpoint_due():  # the loop's own connection never checkpoints (a copy and two fsyncs)
            try:
                await run_in_threadpool(db.checkpoint)
            except Exception as exc:  # the write is committed; the next checkpoint will do
                log.warning("WAL checkpoint failed: %s", exc)
        return result

    # -- inputs ------------------------------------------------------------------
    def decode_input(
        self, value: str, field: str = "input", *, allow_base64: bool = True, wait: bool = True
    ) -> bytes:
        """URL / data: URI / base64 -> bytes, as ApiError(400) on failure.

        ``wait=False``: WouldWait for a URL (a fetch) or an input over NO_WAIT_INPUT_CHARS."""
        if not wait and isinstance(value, str) and len(value) > NO_WAIT_INPUT_CHARS:
            raise WouldWait(f"{field}: a large input to decode")
        try:
            return self.fetcher.decode_input(value, field, allow_base64=allow_base64, wait=wait)
        except InputError as exc:
            raise ApiError(400, str(exc), code="invalid") from None

    def fetch_url(self, url: str, field: str = "url") -> bytes:
        try:
            return self.fetcher.fetch(url, field)
        except InputError as exc:
            raise ApiError(400, str(exc), code="invalid") from None


def route_template(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else request.url.path


_ID_RE = re.compile(r"^\s*\d{1,18}\s*$")


def parse_id(value: Any, field: str) -> int:
    """Vendors send ids as ints or digit strings ('1495'); anything else is a one-line 400.

    The message names the field, not the value: a key pasted into an id field must not
    come back in the answer.
    """
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**18:
        return value
    if isinstance(value, str) and _ID_RE.match(value):
        return int(value)
    raise ApiError(400, f"{field}: expected an id (a whole number such as 1495)", code="invalid")


@contextmanager
def service_errors() -> Iterator[None]:
    """Turn LocalService errors into ApiError (the app also does this globally; use it
    where a dialect wants to catch and re-shape one error itself)."""
    from reconciler.local.errors import LocalError

    try:
        yield
    except LocalError as exc:
        raise api_error_from_local(exc) from None


def api_error_from_local(exc: Exception) -> ApiError:
    from reconciler.local.errors import ConflictError, InvalidInputError, NotFoundError, StateError, StorageError

    message = str(exc) or type(exc).__name__
    if isinstance(exc, StorageError):  # the server's disk, not the request: 507; its path only in the log
        log.error("%s", message)
        return ApiError(507, "insufficient storage: the server could not store this", code="storage")
    if isinstance(exc, NotFoundError):
        return ApiError(404, message, code="not_found")
    if isinstance(exc, ConflictError):
        return ApiError(409, message, code="conflict")
    if isinstance(exc, StateError):
        return ApiError(409, message, code="state")
    if isinstance(exc, InvalidInputError):
        return ApiError(400, message, code="invalid")
    return ApiError(400, message, code=getattr(exc, "code", None) or "invalid")
