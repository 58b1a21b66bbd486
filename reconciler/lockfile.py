"""``modelsync.lock``: every source pinned to its digest and size, and each dataset digest.

Committed beside the spec, it makes a dataset reproducible: ``plan --locked`` fails
when any source no longer resolves to what the lock says.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from reconciler.atomic import write_atomic
from reconciler.errors import UserError
from reconciler.model import canonical_json, sha256_digest
from reconciler.resolve import Resolved

LOCK_FORMAT = 1
LOCK_NAME = "modelsync.lock"


def lock_entry(resolved: Resolved, key: str) -> dict[str, Any]:
    """What the lock file pins for one model."""
    model = resolved.models[key]
    sources = resolved.sources.get(key, {})
    return {
        "dataset_digest": model.dataset_digest,
        "config_digest": model.config_digest,
        "samples": len(model.samples),
        "sources": {s: {"digest": d, "size": n} for s, (d, n) in sorted(sources.items())},
    }


def lock_body(resolved: Resolved) -> dict[str, Any]:
    return {"version": LOCK_FORMAT, "models": {key: lock_entry(resolved, key) for key in sorted(resolved.models)}}


def entry_digest(entry: dict[str, Any]) -> str:
    """The digest of one model's lock entry (canonical JSON): equal digests, equal entries."""
    return sha256_digest(canonical_json(entry).encode())


class LockDigests(Mapping[str, str]):
    """model key -> digest of the lock entry ``resolved`` gives it, computed on first use.

    A saved plan records them (``meta.source_digests``) and ``apply PLANFILE`` compares them
    with a fresh resolve, so the lock it writes is the one the plan saw. An unsaved plan
    never computes them (at 100k sources, a sort and a canonical JSON of every source)."""

    def __init__(self, resolved: Resolved):
        self._resolved = resolved
        self._computed: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        if key not in self._computed:
            self._computed[key] = entry_digest(lock_entry(self._resolved, key))
        return self._computed[key]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._resolved.models))

    def __len__(self) -> int:
        return len(self._resolved.models)


def read_lock(spec_dir: Path) -> dict[str, Any] | None:
    path = spec_dir / LOCK_NAME
    try:
        body = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("version") != LOCK_FORMAT:
        found = body.get("version") if isinstance(body, dict) else type(body).__name__
        raise UserError(f"{path}: unsupported lock format {found!r}")
    models = body.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(m, dict) for m in models.values()):
        raise UserError(f"{path}: not a modelsync lock file (models must map names to entries); regenerate it")
    return body


def write_lock(spec_dir: Path, resolved: Resolved, *, merge: bool = True) -> bool:
    """Write the lock; models outside ``resolved`` (other --target runs) are kept. Returns True if changed."""
    body = lock_body(resolved)
    old = read_lock(spec_dir) if merge else None
    if old:
        merged = dict(old.get("models", {}))
        merged.update(body["models"])
        body["models"] = dict(sorted(merged.items()))
    text = json.dumps(body, indent=2, sort_keys=False) + "\n"
    path = spec_dir / LOCK_NAME
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, text.encode())
    return True


def check_locked(spec_dir: Path, resolved: Resolved) -> list[str]:
    """Every way the resolved sources differ from the lock file, one message each."""
    lock = read_lock(spec_dir)
    if lock is None:
        return [f"{LOCK_NAME}: no lock file; run `modelsync apply` (or plan without --locked) first"]
    problems: list[str] = []
    locked_models = lock.get("models", {})
    for key in sorted(resolved.models):
        locked = locked_models.get(key)
        if locked is None:
            problems.append(f"{LOCK_NAME}: model '{key}' is not in the lock file")
            continue
        locked_sources = locked.get("sources", {})
        current = resolved.sources.get(key, {})
        for source, (digest, size) in sorted(current.items()):
            pinned = locked_sources.get(source)
            if pinned is None:
                problems.append(f"{LOCK_NAME}: {key}: source {source} is new (not in the lock file)")
            elif pinned.get("digest") != digest:
                problems.append(
                    f"{LOCK_NAME}: {key}: source {source} changed: "
                    f"locked {pinned.get('digest', '')[:19]}…, now {digest[:19]}…"
                )
            elif pinned.get("size") != size:
                problems.append(f"{LOCK_NAME}: {key}: source {source} changed size")
        for source in sorted(set(locked_sources) - set(current)):
            problems.append(f"{LOCK_NAME}: {key}: source {source} is locked but no longer declared or present")
    return problems
