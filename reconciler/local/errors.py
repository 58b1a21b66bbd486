"""Errors of the embedded training service.

Each carries a short machine ``code`` (the HTTP dialects map it to a status) and a
one-line message fit to show a user as is: it names the field or object concerned.
An id owned by someone else gets exactly the message of an absent one, so that
tenants cannot probe each other's ids.
"""

from __future__ import annotations


class LocalError(Exception):
    code = "error"

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()) or type(self).__name__)

    @property
    def message(self) -> str:
        return str(self)


class NotFoundError(LocalError):
    code = "not_found"


class InvalidInputError(LocalError):
    code = "invalid"


class ConflictError(LocalError):
    code = "conflict"


class StateError(LocalError):
    """The object exists but is not in a state that allows the call (e.g. never trained)."""

    code = "state"
