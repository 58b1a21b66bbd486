"""Provider sections before schema validation: secrets, ``${env:NAME}``, which fields apply.

This runs on the raw data so that every provider's problems are reported even when
something else in the spec is invalid, and so that secrets are checked (written as
``${env:NAME}``, never literally) and substituted before pydantic ever sees them.
Values taken from the environment are never shown in messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from specs.diagnostics import Issue, SpecPath
from specs.models import PROVIDER_FIELDS, ProviderSpec

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_FIELDS = frozenset({"api_key"})


@dataclass
class Prepared:
    """The spec data with provider values substituted, and what was found on the way."""

    data: Any
    issues: list[Issue] = field(default_factory=list)
    reported: set[SpecPath] = field(default_factory=set)  # later stages say nothing more at or under these
    hidden: dict[SpecPath, str] = field(default_factory=dict)  # value path -> what messages show instead


def prepare_providers(data: Any, env: Mapping[str, str]) -> Prepared:
    """Check and substitute every provider section of ``data`` (the parsed spec)."""
    out = Prepared(data=data)
    providers = data.get("providers") if isinstance(data, dict) else None
    if not isinstance(providers, dict):
        return out
    new_providers: dict[str, Any] = {}
    for name, raw in providers.items():
        new_providers[name] = _provider(name, raw, env, out) if isinstance(raw, dict) else raw
    out.data = {**data, "providers": new_providers}
    return out


def _provider(name: str, raw: dict[str, Any], env: Mapping[str, str], out: Prepared) -> dict[str, Any]:
    kind = raw.get("type")
    kind = kind if isinstance(kind, str) and kind in PROVIDER_FIELDS else None
    result = dict(raw)
    for key, value in raw.items():
        path: SpecPath = ("providers", name, key)
        if key in _SECRET_FIELDS:
            out.hidden[path] = f"the {key}"
        if kind is not None and key in ProviderSpec.model_fields and key not in PROVIDER_FIELDS[kind]:
            applies = ", ".join(t for t, fields in PROVIDER_FIELDS.items() if key in fields)
            _report(out, Issue(path, f"{key} does not apply to provider type '{kind}' (only to {applies})", at="key"))
            continue
        if key in _SECRET_FIELDS and not (isinstance(value, str) and ENV_REF.fullmatch(value)):
            _report(out, Issue(path, f"{key} must come from the environment: write ${{env:NAME}}", at="value"))
            continue
        if key in ProviderSpec.model_fields and isinstance(value, str) and "${" in value:  # unknown keys: schema says
            result[key] = _substitute(path, value, env, out, secret=key in _SECRET_FIELDS)
    if kind is not None and kind != "local" and "api_key" not in raw:
        message = f"provider type '{kind}' needs an api_key: write api_key: ${{env:NAME}}"
        out.issues.append(Issue(("providers", name), message))  # not `reported`: the rest is still checked
    return result


def _substitute(path: SpecPath, template: str, env: Mapping[str, str], out: Prepared, *, secret: bool) -> str:
    """Replace each ``${env:NAME}``; a bad reference or an unset variable is an Issue naming it."""
    out.hidden.setdefault(path, f"the value of {template}")
    problems: list[str] = []
    for m in re.finditer(r"\$\{", template):
        if not ENV_REF.match(template, m.start()):
            end = template.find("}", m.start())
            ref = template[m.start() : end + 1] if end >= 0 else template[m.start() :]
            problems.append(f"cannot read {ref}: write ${{env:NAME}} (NAME: letters, digits, _)")

    def value_of(m: re.Match[str]) -> str:
        var = m.group(1)
        if var not in env:
            problems.append(f"environment variable {var} is not set")
            return ""
        if secret and not env[var]:
            problems.append(f"environment variable {var} is empty")
        return env[var]

    result = ENV_REF.sub(value_of, template)
    for message in problems:
        _report(out, Issue(path, message, at="value"))
    return result


def _report(out: Prepared, issue: Issue) -> None:
    out.issues.append(issue)
    out.reported.add(issue.path)
