"""`status`: what differs between spec, state and remote, without making a plan."""

from __future__ import annotations

from typing import Any

from reconciler.engine import capabilities, check_spec, resolve_spec
from reconciler.model import RemoteModel
from reconciler.plan import NEVER_TRAINED, ModelPlan, plan_model, plural, samples_with_uids
from reconciler.providers.base import CAP_DELETE_CLASS
from reconciler.refresh import identities, refresh
from reconciler.state import load_state
from reconciler.workspace import Workspace


def compute_drift(ws: Workspace, targets: tuple[str, ...] = ()) -> dict[str, Any]:
    check_spec(ws, targets)
    resolved = resolve_spec(ws, targets)
    state = load_state(ws.project_dir)
    refreshed = refresh(ws, identities(resolved.models), state, targets)
    caps = capabilities(ws)
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
        samples = samples_with_uids(desired, remote, mstate, caps[desired.provider])
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
        # An undeclared class counts if it holds samples, or if plan would delete it. An empty one
        # that the vendor cannot delete (Autogon keeps a renamed class) is not drift: nothing could
        # ever clear it.
        populated = {s.class_name for s in samples}
        deletable = CAP_DELETE_CLASS in caps[desired.provider] and desired.prune != "none"
        extra_classes = sorted(c for c in set(remote.classes) - set(desired.classes) if c in populated or deletable)
        entry["classes_not_declared"] = extra_classes
        latest = remote.versions[0] if remote.versions else None
        recorded = mstate.versions[0] if mstate and mstate.versions else None
        entry["latest_version"] = latest.version if latest else (recorded or {}).get("version")
        found = plan_model(desired, remote, mstate, caps[desired.provider])
        entry["training"] = training_drift(found, remote)
        entry["config"] = next((list(op.changes or ()) for op in found.operations if op.op == "configure"), None)
        models[key] = entry
    for key in sorted(refreshed.orphans):
        if key.endswith("#previous"):
            continue
        models[key] = {"remote": "present", "note": "no longer declared; plan will delete it"}
    for key in sorted(refreshed.gone):
        models[key] = {"remote": "missing", "note": "in the state but removed from the remote"}
    in_sync = all(_in_sync(m) for m in models.values())
    return {"in_sync": in_sync, "models": models}


def training_drift(found: ModelPlan, remote: RemoteModel) -> dict[str, Any] | None:
    """What the spec's training would run again for (None: nothing), decided exactly as plan
    decides its train op (``found``: plan_model's result), with the plan's reason."""
    decision = found.train
    if decision is None:
        return None
    reason = next(op.reason for op in found.operations if op.op == "train")
    failed = remote.training_status if remote.training_status in ("failed", "canceled") else None
    return {
        "never_trained": decision.latest is None,
        "dataset_changed": decision.dataset_changed,
        "config_changed": decision.config_changed,
        "last_run": failed,
        "reason": reason,
    }


def _training_lines(t: dict[str, Any]) -> list[str]:
    """``training: ...`` lines for render_drift."""
    changed = [name for name in ("dataset", "config") if t[f"{name}_changed"]]
    if changed:
        lines = [f"training: {' and '.join(changed)} changed since the last trained version ({t['reason']})"]
    else:
        lines = [f"training: {NEVER_TRAINED}"]
    if t["last_run"]:
        lines.append(f"training: the last training run {t['last_run']}")
    return lines


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
            "training",
            "config",
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
            out.print(f"{key}: missing on the remote ({plural(m.get('not_uploaded', 0), 'sample')} declared)")
            continue
        out.print(f"{key}: drifted")
        if m["not_uploaded"]:
            out.print(f"  {plural(m['not_uploaded'], 'declared sample')} not on the remote")
        if m["no_longer_declared"]:
            out.print(f"  {plural(m['no_longer_declared'], 'managed sample')} no longer declared")
        if m["removed_outside"]:
            out.print(
                f"  {plural(len(m['removed_outside']), 'sample')} removed outside modelsync: "
                + ", ".join(m["removed_outside"][:5])
            )
        if m["added_outside"]:
            out.print(
                f"  {plural(len(m['added_outside']), 'sample')} added outside modelsync (unmanaged): "
                + ", ".join(m["added_outside"][:5])
            )
        if m["moved"]:
            out.print(f"  {plural(len(m['moved']), 'sample')} in another class than declared")
        if m["classes_not_declared"]:
            out.print("  classes on the remote not in the spec: " + ", ".join(m["classes_not_declared"]))
        for line in _training_lines(m["training"]) if m.get("training") else ():
            out.print(f"  {line}")
        if m.get("config"):  # training.auto false: the vendor's stored config differs from the spec
            out.print("  config differs from the remote's: " + "; ".join(m["config"]))
    out.print("In sync." if report["in_sync"] else "Drift detected.")
