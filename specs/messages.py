"""Turn pydantic's validation errors into short human messages at the right node.

pydantic's own text ("Input should be ...", links to its docs) is written for
programmers; a spec author wants "expected one of small, medium, large, got 'huge'".
"""

from __future__ import annotations

import difflib
import math
import re
import types
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from specs.diagnostics import Issue, SpecPath
from specs.models import SAMPLE_TAGS, Spec
from specs.yamlread import PlainFloat, PlainInt

# Hides a value in messages (secrets, values taken from the environment); returns its stand-in or None.
Redactor = Callable[[SpecPath], str | None]


def describe(value: Any) -> str:
    """A value as a message shows it: 'text', 42, true, an empty value, a list."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, PlainInt | PlainFloat):
        return value.source
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return repr(shown)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to a probable typo, or None."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def normalize_loc(loc: tuple[Any, ...]) -> SpecPath:
    """Drop the union tags pydantic inserts after a sample's index (``samples.2.entry.uid``)."""
    out: list[Any] = []
    skip_next = False
    for i, part in enumerate(loc):
        if skip_next:
            skip_next = False
            if part in SAMPLE_TAGS:
                continue
        out.append(part)
        if isinstance(part, int) and i >= 1 and loc[i - 1] == "samples":
            skip_next = True
    return tuple(out)


def fields_at(path: SpecPath) -> list[str] | None:
    """The field names of the model found at ``path`` in the schema, if it is a model."""
    current: Any = Spec
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional; of a union, keep the model member (a sample's mapping form)."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(tp) if a is not type(None)]
            models = [m for m in (_unwrap(a) for a in members) if isinstance(m, type) and issubclass(m, BaseModel)]
            tp = models[0] if models else members[0]
        else:
            return tp


def _choices(expected: str) -> list[str]:
    quoted = re.findall(r"'([^']*)'", expected)
    return quoted or [p.strip() for p in re.split(r",| or ", expected) if p.strip()]


def issues_from_errors(errors: list[dict[str, Any]], redact: Redactor) -> list[Issue]:
    """One Issue per pydantic error, deduplicated, in pydantic's (document) order."""
    out: list[Issue] = []
    seen: set[tuple[SpecPath, str]] = set()
    for err in errors:
        issue = _issue(err, redact)
        if (issue.path, issue.message) not in seen:
            seen.add((issue.path, issue.message))
            out.append(issue)
    return out


def _issue(err: dict[str, Any], redact: Redactor) -> Issue:
    kind: str = err["type"]
    loc = normalize_loc(tuple(err["loc"]))
    value = err.get("input")
    ctx = err.get("ctx") or {}
    hidden = redact(loc)
    got = hidden if hidden is not None else describe(value)
    parent, last = loc[:-1], (loc[-1] if loc else None)

    if kind == "missing":
        hint = " (write version: 1 at the top)" if loc == ("version",) else ""
        return Issue(parent, f"missing required key '{last}'{hint}")
    if kind == "extra_forbidden":
        known = fields_at(parent) or []
        close = suggest(str(last), known)
        hint = f"did you mean '{close}'?" if close else "expected one of: " + ", ".join(known)
        return Issue(loc, f"unknown key ({hint})" if known else "unknown key", at="key")
    if loc == ("version",):
        if isinstance(value, str) and value.strip() == "1":  # version: "1", quoted
            return Issue(loc, f"version must be the number 1, not the string {got} (write version: 1)", at="value")
        return Issue(loc, f"unsupported version {got} (this modelsync reads version 1)", at="value")

    special = _special(kind, loc, value, got)
    if special is not None:
        return Issue(loc, special, at="value")
    if kind == "literal_error":
        choices = _choices(str(ctx.get("expected", "")))
        close = suggest(value, choices) if isinstance(value, str) and hidden is None else None
        hint = f" (did you mean '{close}'?)" if close else ""
        return Issue(loc, f"expected one of {', '.join(choices)}, got {got}{hint}", at="value")
    return Issue(loc, _generic(kind, err, ctx, got), at="value")


def _special(kind: str, loc: SpecPath, value: Any, got: str) -> str | None:
    """Messages that depend on where the error is, not only on its type."""
    n = len(loc)
    # models.<m>.classes.<c>[.samples]
    in_class = n >= 4 and loc[0] == "models" and loc[2] == "classes"
    if in_class and n == 4 and value is None:
        return f"class '{loc[3]}' has no samples"
    if in_class and n == 5 and loc[4] == "samples" and (kind == "too_short" or value is None):
        return f"class '{loc[3]}' has no samples"
    if in_class and n == 6 and isinstance(loc[5], int) and kind in ("string_type", "model_type"):
        return f"expected a path or URL, or a mapping with path: or url:, got {got}"
    return None


_RANGE = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be {ge} or more",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be {le} or less",
}
_EXPECTED = {
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
}


def _generic(kind: str, err: dict[str, Any], ctx: dict[str, Any], got: str) -> str:
    if kind in _EXPECTED:
        return f"{_EXPECTED[kind]}, got {got}"
    if kind in _RANGE:
        bounds = {k: _num(v) for k, v in ctx.items()}
        return f"{_RANGE[kind].format(**bounds)}, got {got}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "finite_number":
        return f"must be a finite number, got {got}"
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if msg.startswith("Input should be "):
        return f"expected {msg[len('Input should be ') :]}, got {got}"
    if kind in _CUSTOM_WITH_VALUE:
        return f"{msg}, got {got}"
    return msg


# Our own (PydanticCustomError) messages that are clearer with the bad value after them.
_CUSTOM_WITH_VALUE = {"http_url", "url", "url_syntax", "config_value", "uid_chars", "path_chars"}


def _num(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)
