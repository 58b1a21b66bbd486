"""`modelsync serve`: the embedded service over HTTP, speaking each vendor's API.

Public API: ``create_app`` (the FastAPI app over a LocalService), ``run`` (uvicorn,
what the CLI calls), ``KeyInfo``/``load_keys_file`` (API keys), ``FaultConfig``
(fault injection for tests and benches). Dialect modules build on ``context``.
"""

from reconciler.local.serve.app import create_app
from reconciler.local.serve.auth import ALL_PERMISSIONS, KeyInfo, load_keys_file
from reconciler.local.serve.context import ApiError, Dialect, Principal, RateLimited, ServeContext, parse_id
from reconciler.local.serve.faults import FaultConfig
from reconciler.local.serve.runner import run

__all__ = [
    "ALL_PERMISSIONS",
    "ApiError",
    "Dialect",
    "FaultConfig",
    "KeyInfo",
    "Principal",
    "RateLimited",
    "ServeContext",
    "create_app",
    "load_keys_file",
    "parse_id",
    "run",
]
