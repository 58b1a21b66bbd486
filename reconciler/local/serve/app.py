"""The FastAPI app of `modelsync serve`: one LocalService, every vendor dialect found.

Cross-cutting rules live here so dialects stay small: every error (service errors,
request validation, unknown paths, crashes) is answered in the owning dialect's error
shape, never as a traceback; bodies are capped; faults can be injected for tests.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.local.serve.auth import KeyInfo, KeyStore, normalize_keys
from reconciler.local.serve.context import ApiError, ServeContext, api_error_from_local
from reconciler.local.serve.faults import FaultConfig, FaultMiddleware
from reconciler.local.serve.ratelimit import SlidingWindowLimiter
from reconciler.local.serve.urlfetch import MAX_FETCH_BYTES, UrlFetcher

if TYPE_CHECKING:
    from reconciler.local.service import LocalService

log = logging.getLogger("modelsync.serve")

# Dialect modules looked up in this package; a missing one is simply not served.
DIALECT_MODULES = ("astica", "autogon", "annolab", "scenario")
# base64 of a 20 MB image plus JSON around it.
MAX_BODY_BYTES = 4 * MAX_FETCH_BYTES // 3 + 2**20
# What a type error expects, by pydantic error type (the message names no input value).
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "none_required": "null",
}
# Union members pydantic adds to an error's location ("model_id.int"): not field names.
_UNION_TAGS = {"int", "str", "float", "bool", "list", "dict", "none", "bytes", "nullable"}
_LOCATIONS = ("body", "query", "header", "path", "cookie")


def _field_name(loc: Any) -> str:
    parts: list[str] = []
    for x in loc:
        if isinstance(x, int):
            parts.append(f"[{x}]")
            continue
        x = str(x)
        if x in _LOCATIONS and not parts:
            continue
        if x in _UNION_TAGS or "[" in x or x[:1].isupper():
            continue  # a union member's tag (int, str, a model's class name, function-after[...])
        parts.append(("." if parts else "") + x)
    return "".join(parts) or "body"


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of errors -> one line naming each field and its problem.

    Never the value sent: a request's values may hold a key (``tkn=...`` posted as a
    form, a key pasted into the wrong field), and an answer or log line must not echo it.
    """
    problems: dict[str, list[dict[str, Any]]] = {}
    for err in exc.errors():
        name = _field_name(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            name = "body"
        problems.setdefault(name, []).append(err)
    parts = []
    for name, errs in list(problems.items())[:3]:
        kinds = [e.get("type") for e in errs]
        if "json_invalid" in kinds:
            reason = next(e for e in errs if e.get("type") == "json_invalid").get("ctx", {}).get("error")
            # json's own messages ("Expecting ',' delimiter") quote no input
            parts.append(f"body: invalid JSON ({reason})" if isinstance(reason, str) else "body: invalid JSON")
        elif "missing" in kinds:
            parts.append(f"{name}: required")
        elif all(k in _EXPECTED for k in kinds):
            expected = " or ".join(dict.fromkeys(_EXPECTED[k] for k in kinds))
            if name == "body" and any(isinstance(e.get("input"), bytes) for e in errs):  # not sent as JSON
                expected += " (send JSON with Content-Type: application/json)"
            parts.append(f"{name}: expected {expected}")
        else:
            # pydantic's own text names the constraint ("String should have at most 200 characters",
            # "Input should be 'json' or 'markdown'"), not the input
            msg, value = str(errs[0].get("msg", "invalid")), errs[0].get("input")
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if isinstance(value, str) and len(value) >= 4 and value in msg:
                msg = "invalid value"  # a message that would quote the input
            parts.append(f"{name}: {msg}")
    return "; ".join(parts) or "invalid request"


class _BodyLimit:
    """Refuse request bodies over ``limit`` bytes with a 413 in the dialect's shape."""

    def __init__(self, app: ASGIApp, ctx: ServeContext, limit: int):
        self.app, self.ctx, self.limit = app, ctx, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = ApiError(413, f"request body larger than {self.limit} bytes", code="too_large")
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self.ctx.error_response(scope.get("path", ""), too_large)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large
            return message

        await self.app(scope, limited, send)


class _CatchAll:
    """Unexpected exceptions -> a 500 in the dialect's shape (logged, no traceback sent)."""

    def __init__(self, app: ASGIApp, ctx: ServeContext):
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            if started:
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            err = ApiError(500, "internal server error", code="internal")
            await self.ctx.error_response(scope.get("path", ""), err)(scope, receive, send)


def load_dialects(ctx: ServeContext) -> list[Any]:
    """Import each dialect module that exists; return their routers (in a fixed order)."""
    routers = []
    for name in DIALECT_MODULES:
        module_name = f"{__package__}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        ctx.dialects.append(module.DIALECT)
        routers.append(module.router(ctx))
    return routers


def create_app(
    service: LocalService,
    *,
    keys: Mapping[str, KeyInfo] | Iterable[str] | None = None,
    rate_limit: int | None = 90,
    total_rate_limit: int | None = 180,
    allow_private_urls: bool = False,
    faults: FaultConfig | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    rate_window: float = 60.0,
) -> FastAPI:
    """The app; the caller owns ``service`` (and closes it). ``rate_window`` (seconds) is
    the limits' window: a minute, shorter only in tests."""
    store = KeyStore(normalize_keys(keys))
    if store.dev_mode:
        log.warning("modelsync serve: no API keys configured: accepting any non-empty key (dev mode)")
    limiter = None
    if rate_limit is not None or total_rate_limit is not None:
        limiter = SlidingWindowLimiter(rate_limit, total_rate_limit, window=rate_window)
    ctx = ServeContext(
        service=service, keys=store, limiter=limiter, fetcher=UrlFetcher(allow_private=allow_private_urls)
    )
    app = FastAPI(
        title="modelsync serve",
        version="1",
        description="The embedded modelsync training service, answering vendors' APIs (astica, Autogon, "
        "AnnoLab, Scenario). Fields marked as modelsync extensions are additions to the vendor's API.",
    )
    app.state.ctx = ctx

    for router in load_dialects(ctx):
        app.include_router(router)

    @app.get("/healthz", include_in_schema=True, summary="modelsync extension: liveness")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "dialects": [d.name for d in ctx.dialects]}

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        return ctx.error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        err = ApiError(400, validation_message(exc), code="validation")
        return ctx.error_response(request.url.path, err)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
        code = "no_route" if exc.status_code in (404, 405) else None
        err = ApiError(exc.status_code, detail, code=code, headers=dict(exc.headers or {}))
        return ctx.error_response(request.url.path, err)

    try:
        from reconciler.local.errors import LocalError
    except ImportError:  # pragma: no cover - the service package is always present in a release
        LocalError = None  # noqa: N806

    if LocalError is not None:

        @app.exception_handler(LocalError)
        async def on_local_error(request: Request, exc: Exception):
            return ctx.error_response(request.url.path, api_error_from_local(exc))

    # Added last = outermost: faults see every request, the catch-all sees every crash.
    app.add_middleware(_CatchAll, ctx=ctx)
    app.add_middleware(_BodyLimit, ctx=ctx, limit=max_body_bytes)
    if faults is not None and faults.active:
        app.add_middleware(FaultMiddleware, config=faults, error_response=ctx.error_response)
    return app
