"""Shared pytest fixtures. Keep this file small: fixtures live in helper modules."""

from tests.serve_fixtures import serve_process, serve_thread, static_files  # noqa: F401
