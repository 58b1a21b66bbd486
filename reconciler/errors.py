"""Errors the CLI turns into one-line messages and exit code 1 (never a traceback)."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: bad input, a refused action, a stale plan.

    ``lines`` holds one message per line (several spec diagnostics, several failed
    operations); ``str()`` joins them.
    """

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


class StaleStateError(UserError):
    """The state or the remote changed since a saved plan was made."""


class LockedError(UserError):
    """Another modelsync process holds the state lock."""
