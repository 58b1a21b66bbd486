"""load_spec: a spec file -> a validated Spec, or a SpecError listing every problem found.

The stages run in order (read, parse, providers, schema, semantics) but each keeps
going past the problems of the previous one where it can, so a user fixes a spec
in one round instead of one error at a time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from specs.checks import check_spec
from specs.diagnostics import Diagnostic, Issue, SpecError, SpecPath, format_path
from specs.messages import describe, issues_from_errors, normalize_loc
from specs.models import Spec
from specs.providers import prepare_providers
from specs.yamlread import Positions, YamlSyntaxError, read_yaml


def load_spec(path: Path | str, env: Mapping[str, str] | None = None, *, shown: str | None = None) -> Spec:
    """Read and check the spec at ``path``; ``env`` (default: os.environ) feeds ``${env:NAME}``.
    ``shown`` is the file name messages use (default: relative to the working directory)."""
    path = Path(path)
    shown = shown or _shown(path)
    text = _read_text(path, shown)
    try:
        data, tree, problems = read_yaml(text)
    except YamlSyntaxError as exc:
        p = exc.problem
        raise SpecError([Diagnostic(shown, p.line, p.col, format_path(p.path), p.message)]) from None
    positions = Positions(tree)
    diags = [Diagnostic(shown, p.line, p.col, format_path(p.path), p.message) for p in problems]
    read_problems = {p.path for p in problems if p.replaces_value}  # no second message for the same node
    if data is None:
        raise SpecError([*diags, Diagnostic(shown, 1, 1, "", "the file is empty; a spec starts with: version: 1")])
    if not isinstance(data, dict):
        line, col = positions.locate(())
        message = f"expected a mapping with version:, providers: and models:, got {describe(data)}"
        raise SpecError([*diags, Diagnostic(shown, line, col, "", message)])

    prepared = prepare_providers(data, os.environ if env is None else env)
    issues: list[Issue] = list(prepared.issues)
    spec: Spec | None = None
    try:
        spec = Spec.model_validate(prepared.data)
    except ValidationError as exc:
        errors = [
            e
            for e in exc.errors(include_url=False)
            if not _under(e["loc"], prepared.reported) and normalize_loc(e["loc"]) not in read_problems
        ]
        issues += issues_from_errors(errors, prepared.hidden.get)
    issues += check_spec(prepared.data, positions.locate)

    diags += [_diagnostic(shown, positions, issue) for issue in issues]
    if diags or spec is None:
        error = SpecError(sorted(diags, key=lambda d: (d.line, d.col)))
        error.draft = Draft(prepared.data, positions, shown, path.absolute().parent)
        raise error
    spec._file = path.absolute()  # relative sample paths must not depend on a later chdir
    spec._shown = shown
    spec._positions = positions
    return spec


@dataclass(frozen=True)
class Draft:
    """What a spec that failed its checks still says: its data as parsed and where each node
    is, so that validate can still check its sources and report them with the other errors."""

    data: dict[str, Any]
    positions: Positions
    shown: str
    base_dir: Path

    def diagnostic(self, path: SpecPath, message: str) -> Diagnostic:
        line, col = self.positions.locate(tuple(path))
        return Diagnostic(self.shown, line, col, format_path(path), message)


def _shown(path: Path) -> str:
    """The file name as messages show it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _read_text(path: Path, shown: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError([Diagnostic(shown, 0, 0, "", f"no such file: {shown}")]) from None
    except IsADirectoryError:
        raise SpecError([Diagnostic(shown, 0, 0, "", f"{shown} is a directory, not a spec file")]) from None
    except OSError as exc:
        raise SpecError([Diagnostic(shown, 0, 0, "", f"cannot read {shown}: {exc.strerror}")]) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        message = f"not UTF-8 text (byte 0x{raw[exc.start]:02x})"
        raise SpecError([Diagnostic(shown, line, col, "", message)]) from None


def _under(loc: tuple[Any, ...], reported: set[SpecPath]) -> bool:
    path = normalize_loc(loc)
    return any(path[: len(p)] == p for p in reported)


def _diagnostic(shown: str, positions: Positions, issue: Issue) -> Diagnostic:
    if issue.at == "key":
        line, col = positions.locate_key(issue.path)
    elif issue.at == "value":
        line, col = positions.locate_value(issue.path)
    else:
        line, col = positions.locate(issue.path)
    return Diagnostic(shown, line, col, format_path(issue.path), issue.message)
