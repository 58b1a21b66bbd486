"""Diagnostics: one problem in a spec, at a file position, as one human line.

Every stage that reads the spec (loading, validation, the resolver) reports through
these, so the CLI can print ``file:line:col: path: message`` the same way for all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from specs.names import has_control

SpecPath = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Diagnostic:
    """One problem. ``line``/``col`` are 1-based (0 when there is no position, e.g. a missing file)."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}: "
        return one_line(f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}")


def one_line(text: str) -> str:
    """``text`` with control characters and line separators escaped (``\\n``): a diagnostic stays one
    line even when a message quotes a name or value that holds one."""
    if not has_control(text):
        return text
    return "".join(json.dumps(c)[1:-1] if has_control(c) else c for c in text)


class SpecError(Exception):
    """The spec is invalid. Carries every diagnostic found, not just the first."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        self.draft: Any = None  # specs.loader.Draft, when the file parsed as a mapping
        super().__init__("\n".join(str(d) for d in self.diagnostics))


def format_path(path: SpecPath) -> str:
    """``("models", "shapes", "classes", "circle", "samples", 2)`` -> ``models.shapes.classes.circle.samples[2]``.

    Keys that are not plain words are quoted (``models["my model"]``) so the path stays unambiguous.
    """
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _PLAIN_KEY.fullmatch(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{json.dumps(part, ensure_ascii=False)}]")
    return "".join(out)


@dataclass(frozen=True)
class Issue:
    """A problem before it has a file position: the loader turns it into a Diagnostic.

    ``at`` says what to point at: ``key`` (an unknown key), ``value`` (a bad value),
    or ``node`` (the node as a whole: a scalar's value, a collection's key).
    """

    path: SpecPath
    message: str
    at: str = "node"
