"""Shared pytest fixtures. Keep this file small: fixtures live in helper modules."""

import reconciler  # noqa: F401  - first: it caps the BLAS threads before any test module imports numpy
from tests.cli_helpers import applied  # noqa: F401
from tests.serve_fixtures import serve_process, serve_thread, static_files  # noqa: F401
