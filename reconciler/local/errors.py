"""Errors of the embedded training service.

Each carries a short machine ``code`` (the HTTP dialects map it to a status) and a
one-line message fit to show a user as is: it names the field or object concerned.
An id owned by someone else gets exactly the message of an absent one, so that
tenants cannot probe each other's ids.
"""

from __future__ import annotations

import errno


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


class StorageError(LocalError):
    """The service's own storage refused a read or write: the disk is full or failing.
    Not the caller's fault, and retrying at once will not help."""

    code = "storage"


class WouldWait(Exception):
    """A call made with ``wait=False`` reached a step that could block: the database busy
    with another writer, a blob going to a file (fsync), a large image to decode, a URL to
    fetch. Nothing was written; the caller runs the call again where waiting is fine.
    ``serve`` runs small uploads on its event loop this way and the rest in its threads."""


# errno values that mean "no room": a full disk, or a quota reached.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def storage_error_from_os(exc: OSError, path: object, doing: str = "writing") -> StorageError:
    """A one-line StorageError for an OSError met while ``doing`` ``path``."""
    if exc.errno in NO_SPACE_ERRNOS:
        return StorageError(f"disk full {doing} {path}")
    return StorageError(f"{exc.strerror or type(exc).__name__} {doing} {path}")
