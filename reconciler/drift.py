"""`status`: what differs between spec, state and remote, without making a plan."""

from __future__ import annotations

from typing import Any

from reconciler.engine import check_spec, resolve_spec
from reconciler.plan import with_state_uids
from reconciler.refresh import identities, refresh
from reconciler.state import load_state
from reconciler.workspace import Workspace


def compute_drift(ws: Workspace, targets: tuple[str, ...] = ()) -> dict[str, Any]:
    check_spec(ws, targets)
    resolved = resolve_spec(ws, targets)
    state = load_state(ws.project_dir)
    refreshed = refresh(ws, identities(resolved.models), state, targets)
    models: dict[str, Any] = {}
    for key, desired in sorted(resolved.models.items()):
        remote = refreshed.remotes.get(key)
        mstate = state.models.get(key)
        entry: dict[str, Any] = {"provider": desired.provider, "title": desired.title}
        if remote is None:
            entry["remote"] = "missing"
            entry["not_uploaded"] = len(desired.samples)
            models[key] = entry
            continue
        entry["remote"] = "present"
        samples = with_state_uids(remote, mstate)
        remote_uids = {s.uid for s in samples if s.uid}
        known = {u for u, v in (mstate.samples.items() if mstate else []) if not v.get("pending")}
        entry["not_uploaded"] = len(set(desired.samples) - remote_uids)
        entry["no_longer_declared"] = len((remote_uids & (known | _derived(remote_uids))) - set(desired.samples))
        entry["removed_outside"] = sorted(known - remote_uids)
        entry["added_outside"] = sorted(
            (s.uid or f"remote:{s.remote_id}")
            for s in samples
            if (s.uid is None or (s.uid not in known and s.uid not in desired.samples and not _is_derived(s.uid)))
        )
        entry["moved"] = sorted(
            s.uid for s in samples if s.uid in desired.samples and desired.samples[s.uid].class_name != s.class_name
        )
        extra_classes = sorted(set(remote.classes) - set(desired.classes))
        entry["classes_not_declared"] = extra_classes
        latest = remote.versions[0] if remote.versions else None
        recorded = mstate.versions[0] if mstate and mstate.versions else None
        entry["latest_version"] = latest.version if latest else (recorded or {}).get("version")
        models[key] = entry
    for key in sorted(refreshed.orphans):
        if key.endswith("#previous"):
            continue
        models[key] = {"remote": "present", "note": "no longer declared; plan will delete it"}
    for key in sorted(refreshed.gone):
        models[key] = {"remote": "missing", "note": "in the state but removed from the remote"}
    in_sync = all(_in_sync(m) for m in models.values())
    return {"in_sync": in_sync, "models": models}


def _is_derived(uid: str) -> bool:
    from reconciler.model import DERIVED_UID_PREFIX

    return uid.startswith(DERIVED_UID_PREFIX)


def _derived(uids: set[str]) -> set[str]:
    return {u for u in uids if _is_derived(u)}


def _in_sync(m: dict[str, Any]) -> bool:
    if m.get("remote") != "present" or m.get("note"):
        return False
    return not any(
        m.get(k)
        for k in (
            "not_uploaded",
            "no_longer_declared",
            "removed_outside",
            "added_outside",
            "moved",
            "classes_not_declared",
        )
    )


def render_drift(report: dict[str, Any], out: Any) -> None:
    for key, m in report["models"].items():
        if _in_sync(m):
            out.print(f"{key}: in sync")
            continue
        if m.get("note"):
            out.print(f"{key}: {m['note']}")
            continue
        if m.get("remote") == "missing":
            out.print(f"{key}: missing on the remote ({m.get('not_uploaded', 0)} samples declared)")
            continue
        out.print(f"{key}: drifted")
        if m["not_uploaded"]:
            out.print(f"  {m['not_uploaded']} declared samples not on the remote")
        if m["no_longer_declared"]:
            out.print(f"  {m['no_longer_declared']} managed samples no longer declared")
        if m["removed_outside"]:
            out.print(
                f"  {len(m['removed_outside'])} samples removed outside modelsync: "
                + ", ".join(m["removed_outside"][:5])
            )
        if m["added_outside"]:
            out.print(
                f"  {len(m['added_outside'])} samples added outside modelsync (unmanaged): "
                + ", ".join(m["added_outside"][:5])
            )
        if m["moved"]:
            out.print(f"  {len(m['moved'])} samples in another class than declared")
        if m["classes_not_declared"]:
            out.print("  classes on the remote not in the spec: " + ", ".join(m["classes_not_declared"]))
    out.print("In sync." if report["in_sync"] else "Drift detected.")
