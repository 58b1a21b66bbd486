"""Input checks of the embedded service: each failure is one InvalidInputError line
naming the field and the value, whichever front end (CLI, HTTP dialect) called."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.local.errors import InvalidInputError

MODEL_TYPES = ("small", "medium", "large")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def text(value: Any, field: str, *, max_len: int = 200, optional: bool = False) -> str | None:
    """A non-empty single-line string (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{field}: expected a string, got {_shown(value)}")
    if not value.strip():
        raise InvalidInputError(f"{field}: must not be empty")
    if len(value) > max_len:
        raise InvalidInputError(f"{field}: longer than {max_len} characters: {_shown(value)}")
    if any(ch in value for ch in "\t\n\r\0"):
        # a tab or newline in a class title would make dataset digests ambiguous
        raise InvalidInputError(f"{field}: must not contain tabs, newlines or NUL: {_shown(value)}")
    return value


def caption(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"caption: expected a string, got {_shown(value)}")
    if len(value) > 10_000:
        raise InvalidInputError("caption: longer than 10000 characters")
    return value


def tags(value: Iterable[Any]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise InvalidInputError(f"tags: expected a list of strings, got {_shown(value)}")
    out = tuple(value)
    for i, tag in enumerate(out):
        text(tag, f"tags[{i}]", max_len=100)
    return out


def boxes(value: Iterable[Any] | None) -> tuple[dict, ...]:
    """Boxes as ``{label, x, y, w, h}`` dicts of floats (Autogon's bbx, in pixels)."""
    if value is None:
        return ()
    if isinstance(value, str | bytes | Mapping):
        raise InvalidInputError(f"boxes: expected a list of boxes, got {_shown(value)}")
    out = []
    for i, box in enumerate(value):
        if not isinstance(box, Mapping):
            raise InvalidInputError(f"boxes[{i}]: expected an object with label, x, y, w, h, got {_shown(box)}")
        label = text(box.get("label"), f"boxes[{i}].label")
        clean: dict[str, Any] = {"label": label}
        for key in ("x", "y", "w", "h"):
            v = box.get(key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InvalidInputError(f"boxes[{i}].{key}: expected a number, got {_shown(v)}")
            if key in ("w", "h") and v <= 0:
                raise InvalidInputError(f"boxes[{i}].{key}: must be greater than 0, got {v!r}")
            if key in ("x", "y") and v < 0:
                raise InvalidInputError(f"boxes[{i}].{key}: must not be negative, got {v!r}")
            clean[key] = float(v)
        out.append(clean)
    return tuple(out)


def config(value: Any) -> dict[str, Any]:
    """A training config: a JSON object with string keys (the trainer checks the values)."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"config: expected an object, got {_shown(value)}")
    for key in value:
        if not isinstance(key, str):
            raise InvalidInputError(f"config: keys must be strings, got {_shown(key)}")
    try:
        json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"config: not JSON-serialisable: {exc}") from None
    return dict(value)


def model_type(value: Any) -> str:
    if value not in MODEL_TYPES:
        raise InvalidInputError(f"model_type: expected small, medium or large, got {_shown(value)}")
    return value


def ident(value: Any, field: str) -> int:
    """Ids are integers; a digit string is accepted, anything else is refused."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{field}: expected an id, got {_shown(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    raise InvalidInputError(f"{field}: expected an id, got {_shown(value)}")
