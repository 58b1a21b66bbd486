"""API keys for `modelsync serve`: who a key belongs to and what it may do.

Keys are secrets: they are held in memory only, never logged, and everything that
needs a stable name for a key (rate-limit buckets, log lines) uses ``key_id``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PERM_VIEW = "Model View"
PERM_EDIT = "Model Edit"
PERM_TRAIN = "Model Train"
PERM_RUN = "Model Run"
PERM_UPLOAD = "Source Upload"
ALL_PERMISSIONS: frozenset[str] = frozenset({PERM_VIEW, PERM_EDIT, PERM_TRAIN, PERM_RUN, PERM_UPLOAD})


def key_id(key: str) -> str:
    """A stable, non-secret name for a key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KeyInfo:
    """What one API key maps to. ``team_id``/``project_ids`` of None mean "any"."""

    owner: str
    permissions: frozenset[str] = ALL_PERMISSIONS
    team_id: str | None = None
    project_ids: frozenset[str] | None = None


@dataclass(frozen=True)
class KeyStore:
    """The accepted keys. Empty means dev mode: any non-empty key is accepted and owns
    the data of owner ``key_id(key)`` (so the same key always sees the same models)."""

    keys: Mapping[str, KeyInfo] = field(default_factory=dict)

    @property
    def dev_mode(self) -> bool:
        return not self.keys

    def lookup(self, key: str | None) -> KeyInfo | None:
        if not key:
            return None
        if self.dev_mode:
            return KeyInfo(owner=key_id(key))
        return self.keys.get(key)


def normalize_keys(keys: Mapping[str, KeyInfo] | Iterable[str] | None) -> dict[str, KeyInfo]:
    """``--key`` strings or a ready mapping -> key -> KeyInfo. A bare key owns its own data."""
    if keys is None:
        return {}
    if isinstance(keys, Mapping):
        return dict(keys)
    out: dict[str, KeyInfo] = {}
    for k in keys:
        if not isinstance(k, str) or not k.strip():
            raise ValueError("--key: an API key must be a non-empty string")
        out[k] = KeyInfo(owner=key_id(k))
    return out


def _load_structured(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return json.loads(text)
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(text)


def load_keys_file(path: str | Path) -> dict[str, KeyInfo]:
    """Read ``{"keys": [{"key", "owner", "permissions", "team_id", "projects"}]}`` (JSON or YAML).

    Errors name the entry and field, never the key itself.
    """
    p = Path(path)
    try:
        doc = _load_structured(p)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{p}: cannot read keys file: {type(exc).__name__}") from None
    except Exception as exc:  # ruamel's YAMLError does not derive from ValueError
        raise ValueError(f"{p}: cannot parse keys file: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"{p}: expected a mapping with a 'keys' list")
    out: dict[str, KeyInfo] = {}
    for i, entry in enumerate(doc["keys"]):
        where = f"{p}: keys[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping")
        unknown = set(entry) - {"key", "owner", "permissions", "team_id", "projects"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        key = entry.get("key")
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{where}.key: must be a non-empty string")
        if key in out:
            raise ValueError(f"{where}.key: the same key is listed twice")
        owner = entry.get("owner", key_id(key))
        if not isinstance(owner, str) or not owner:
            raise ValueError(f"{where}.owner: must be a non-empty string, got {owner!r}")
        perms = entry.get("permissions")
        if perms is None:
            permissions = ALL_PERMISSIONS
        elif isinstance(perms, list) and all(isinstance(x, str) for x in perms):
            bad = sorted(set(perms) - ALL_PERMISSIONS)
            if bad:
                raise ValueError(f"{where}.permissions: unknown permission {bad[0]!r}")
            permissions = frozenset(perms)
        else:
            raise ValueError(f"{where}.permissions: must be a list of strings")
        team = entry.get("team_id")
        if team is not None and not isinstance(team, str | int):
            raise ValueError(f"{where}.team_id: must be a string, got {team!r}")
        projects = entry.get("projects")
        if projects is not None and not isinstance(projects, list):
            raise ValueError(f"{where}.projects: must be a list")
        out[key] = KeyInfo(
            owner=owner,
            permissions=permissions,
            team_id=None if team is None else str(team),
            project_ids=None if projects is None else frozenset(str(x) for x in projects),
        )
    return out
