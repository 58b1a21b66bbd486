"""Diff desired against refreshed remote state, and plan the operations. Pure functions.

Samples are diffed as sets keyed by uid (O(n)); deepdiff reports the nested
training-config changes, where a path-level report is what a reader wants.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

from reconciler.model import (
    DERIVED_UID_PREFIX,
    DesiredModel,
    RemoteModel,
    RemoteSample,
    TrainingSettings,
    dataset_digest,
)
from reconciler.providers import base as caps
from reconciler.state import ModelState, State

PLAN_FORMAT = 1
# The order operations run in, within a model; apply runs each group as one parallel phase.
OP_ORDER = (
    "create_model",
    "delete_sample",
    "delete_class",
    "upload_sample",
    "update_sample",
    "configure",
    "train",
    "delete_model",
)


@dataclass(frozen=True)
class Operation:
    """One step of a plan. Fields that do not apply to ``op`` stay None and are left out of JSON."""

    op: str
    model: str
    provider: str | None = None
    title: str | None = None
    class_name: str | None = None
    uid: str | None = None
    digest: str | None = None
    size: int | None = None
    source: str | None = None
    remote_id: str | None = None  # the remote sample, class or model id acted on
    reason: str | None = None
    caption: str | None = None
    boxes: tuple[dict, ...] | None = None
    samples: int | None = None  # samples removed with a class
    config: dict[str, Any] | None = None
    changes: tuple[str, ...] | None = None
    dataset_digest: str | None = None
    config_digest: str | None = None
    previous_dataset_digest: str | None = None
    previous_config_digest: str | None = None
    model_type: str | None = None
    base: str | None = None
    type: str | None = None
    purpose: str | None = None
    tags: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            name = "class" if f.name == "class_name" else f.name
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Operation:
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in raw.items():
            attr = "class_name" if name == "class" else name
            if attr not in known:
                raise ValueError(f"unknown operation field {name!r}")
            kwargs[attr] = tuple(value) if isinstance(value, list) else value
        if kwargs.get("op") not in OP_ORDER:
            raise ValueError(f"unknown operation {kwargs.get('op')!r}")
        return cls(**kwargs)


class RemoteFingerprints(Mapping[str, str]):
    """model key -> fingerprint of the remote model the plan read ("absent": none), computed on
    first use. Only a saved plan needs them (`plan --out`, `plan --json`, checked by `apply
    PLANFILE`), and at 100k samples each costs a sort and a canonical JSON of every sample
    (~0.1 s and ~30 MB of peak memory, measured): an unsaved plan never pays it."""

    def __init__(self, remotes: Mapping[str, RemoteModel | None]):
        self._remotes = remotes
        self._computed: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        if key not in self._computed:
            remote = self._remotes[key]
            self._computed[key] = remote.fingerprint() if remote is not None else "absent"
        return self._computed[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._remotes)

    def __len__(self) -> int:
        return len(self._remotes)


@dataclass
class Plan:
    operations: list[Operation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unmanaged: dict[str, int] = field(default_factory=dict)  # model -> foreign samples left alone
    # model -> managed samples the spec no longer declares, kept because of ``prune: none``
    no_longer_declared: dict[str, int] = field(default_factory=dict)
    mass_deletes: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (deleted, of)
    errors: list[str] = field(default_factory=list)  # plan-level refusals (prevent_destroy)
    # What the plan was computed from, to refuse it when stale.
    spec_digest: str | None = None
    state_serial: int | None = None
    state_lineage: str | None = None
    # model key -> remote fingerprint or "absent" (a RemoteFingerprints when built by build_plan)
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    targets: tuple[str, ...] = ()
    # model key -> digest of the lock entry its sources resolved to (lockfile.LockDigests when
    # built by compute_plan); None: not recorded (a plan file from before modelsync recorded them)
    source_digests: Mapping[str, str] | None = None

    @property
    def changes(self) -> bool:
        return bool(self.operations)

    def summary(self) -> dict[str, int]:
        counts = Counter(op.op for op in self.operations)
        return {name: counts[name] for name in OP_ORDER if counts[name]}

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": PLAN_FORMAT,
            "changes": self.changes,
            "summary": self.summary(),
            "operations": [op.to_json() for op in self.operations],
            "warnings": self.warnings,
            "errors": self.errors,
            "unmanaged": self.unmanaged,
            "no_longer_declared": self.no_longer_declared,
            "mass_deletes": {k: {"delete": d, "of": n} for k, (d, n) in self.mass_deletes.items()},
            "meta": {
                "spec_digest": self.spec_digest,
                "state_serial": self.state_serial,
                "state_lineage": self.state_lineage,
                "fingerprints": dict(self.fingerprints),
                "targets": list(self.targets),
                **({} if self.source_digests is None else {"source_digests": dict(self.source_digests)}),
            },
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        if raw.get("format_version") != PLAN_FORMAT:
            raise ValueError(f"unsupported plan format {raw.get('format_version')!r}")
        meta = raw.get("meta") or {}
        source_digests = meta.get("source_digests")
        if source_digests is not None and not (
            isinstance(source_digests, dict) and all(isinstance(v, str) for v in source_digests.values())
        ):
            raise ValueError("meta.source_digests must map model names to digests")
        return cls(
            operations=[Operation.from_json(o) for o in raw.get("operations", [])],
            warnings=list(raw.get("warnings", [])),
            errors=[str(e) for e in raw.get("errors", [])],
            unmanaged=dict(raw.get("unmanaged", {})),
            no_longer_declared=dict(raw.get("no_longer_declared", {})),
            mass_deletes={k: (v["delete"], v["of"]) for k, v in raw.get("mass_deletes", {}).items()},
            spec_digest=meta.get("spec_digest"),
            state_serial=meta.get("state_serial"),
            state_lineage=meta.get("state_lineage"),
            fingerprints=dict(meta.get("fingerprints", {})),
            targets=tuple(meta.get("targets", [])),
            source_digests=source_digests,
        )


def planned_samples(
    plan: Plan, key: str, remote: RemoteModel | None, mstate: ModelState | None
) -> dict[str, tuple[str, str | None]]:
    """uid -> (class, digest or None if unknown) of the samples model ``key`` holds once ``plan``
    has run on ``remote`` (the remote the plan was computed from): what the plan saw declared."""
    ops = [op for op in plan.operations if op.model == key]
    gone = {op.remote_id for op in ops if op.op == "delete_sample"}
    gone_classes = {op.class_name for op in ops if op.op == "delete_class"}
    out: dict[str, tuple[str, str | None]] = {}
    if remote is not None:
        for s in with_state_uids(remote, mstate):
            if s.uid is not None and s.remote_id not in gone and s.class_name not in gone_classes:
                out[s.uid] = (s.class_name, _known_digest(s, mstate))
    for op in ops:
        if op.op == "upload_sample" and op.uid is not None and op.class_name is not None:
            out[op.uid] = (op.class_name, op.digest)
    return out


# --------------------------------------------------------------------------- diff


def with_state_uids(remote: RemoteModel, mstate: ModelState | None) -> list[RemoteSample]:
    """Remote samples, with uids filled in from the state where the vendor keeps none."""
    if mstate is None or all(s.uid is not None for s in remote.samples):
        return remote.samples
    by_remote_id = {str(v.get("remote_id")): uid for uid, v in mstate.samples.items() if v.get("remote_id")}
    out = []
    for s in remote.samples:
        if s.uid is None and s.remote_id in by_remote_id:
            s = RemoteSample(
                s.remote_id, by_remote_id[s.remote_id], s.class_name, s.size, s.digest, s.caption, s.boxes, s.url
            )
        out.append(s)
    return out


def adopted_samples(
    desired: DesiredModel, remote: RemoteModel | None, mstate: ModelState | None, capabilities: frozenset[str]
) -> dict[str, RemoteSample]:
    """uid -> the remote sample with no known uid that *is* that declared sample: the same class
    and the same bytes, by the digest the vendor's listing reports.

    Only for vendors that keep no uid (Autogon, Scenario): the state file alone links their
    images to uids, and a lost or never-shared state (a fresh CI checkout) would otherwise see
    every image as foreign and upload it again. Where the vendor keeps uids, a uid-less sample
    is someone else's and stays foreign. A URL alone is not enough: the bytes behind it may have
    changed since the image was fetched. Matching is one to one and deterministic."""
    if remote is None:
        return {}
    return _match_foreign(desired, with_state_uids(remote, mstate), capabilities)


def samples_with_uids(
    desired: DesiredModel, remote: RemoteModel, mstate: ModelState | None, capabilities: frozenset[str]
) -> list[RemoteSample]:
    """The remote samples with the uids plan (and status) give them: from the state, else, for a
    vendor that keeps no uid, by class and bytes (adopted_samples)."""
    samples = with_state_uids(remote, mstate)
    adopted = _match_foreign(desired, samples, capabilities)
    if not adopted:
        return samples
    by_remote_id = {s.remote_id: uid for uid, s in adopted.items()}
    return [replace(s, uid=by_remote_id[s.remote_id]) if s.uid is None and s.remote_id in by_remote_id else s
            for s in samples]


def _match_foreign(
    desired: DesiredModel, samples: list[RemoteSample], capabilities: frozenset[str]
) -> dict[str, RemoteSample]:
    """adopted_samples over remote samples whose state uids are already filled in."""
    if caps.CAP_SAMPLE_UIDS in capabilities:
        return {}
    candidates: dict[tuple[str, str], list[RemoteSample]] = {}
    for s in samples:
        if s.uid is None and s.digest:
            candidates.setdefault((s.class_name, s.digest), []).append(s)
    if not candidates:
        return {}
    known = {s.uid for s in samples if s.uid is not None}
    out: dict[str, RemoteSample] = {}
    taken: set[str] = set()
    for uid in sorted(desired.samples):
        if uid in known:
            continue
        want = desired.samples[uid]
        match = next((s for s in candidates.get((want.class_name, want.digest), ()) if s.remote_id not in taken), None)
        if match is not None:
            out[uid] = match
            taken.add(match.remote_id)
    return out


def _group_by_uid(
    samples: list[RemoteSample],
) -> tuple[dict[str, RemoteSample], dict[str, list[RemoteSample]], list[RemoteSample]]:
    """(uid -> first copy, uid -> every copy for a uid held more than once, samples without uid).

    One dict entry per sample rather than a list per uid: at 100k samples the lists were a
    measurable share of a no-op plan, and duplicates are rare."""
    first: dict[str, RemoteSample] = {}
    copies: dict[str, list[RemoteSample]] = {}
    foreign: list[RemoteSample] = []
    for s in samples:
        uid = s.uid
        if uid is None:
            foreign.append(s)
        elif uid in first:
            copies.setdefault(uid, [first[uid]]).append(s)
        else:
            first[uid] = s
    return first, copies, foreign


def _is_managed(uid: str | None, mstate: ModelState | None) -> bool:
    if uid is None:
        return False
    return uid.startswith(DERIVED_UID_PREFIX) or (mstate is not None and uid in mstate.samples)


def _known_digest(s: RemoteSample, mstate: ModelState | None) -> str | None:
    if s.digest:
        return s.digest
    if mstate is not None and s.uid in mstate.samples:
        return mstate.samples[s.uid].get("digest")
    if s.uid and s.uid.startswith(DERIVED_UID_PREFIX):
        return None  # the uid pins the digest's prefix only; unknown in full
    return None


def _box_dicts(boxes) -> tuple[dict, ...]:
    return tuple({"label": b.label, "x": b.x, "y": b.y, "w": b.w, "h": b.h} for b in boxes)


def _same_boxes(a, b) -> bool:
    key = lambda bx: (bx.label, round(bx.x, 3), round(bx.y, 3), round(bx.w, 3), round(bx.h, 3))  # noqa: E731
    return sorted(map(key, a)) == sorted(map(key, b))


def config_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> tuple[str, ...]:
    """Human lines for what changed between two training configs, by path (deepdiff)."""
    from deepdiff import DeepDiff

    if not old or not new:  # DeepDiff reports an empty side as one change of the whole root
        return tuple(sorted([f"{k}: (unset) -> {v!r}" for k, v in (new or {}).items()]
                            + [f"{k}: {v!r} -> (unset)" for k, v in (old or {}).items()]))
    diff = DeepDiff(old, new, ignore_order=True, verbose_level=2)
    lines: list[str] = []
    for path, change in diff.get("values_changed", {}).items():
        lines.append(f"{_dd_path(path)}: {change['old_value']!r} -> {change['new_value']!r}")
    for path, change in diff.get("type_changes", {}).items():
        lines.append(f"{_dd_path(path)}: {change['old_value']!r} -> {change['new_value']!r}")
    for path, value in diff.get("dictionary_item_added", {}).items():
        lines.append(f"{_dd_path(path)}: (unset) -> {value!r}")
    for path, value in diff.get("dictionary_item_removed", {}).items():
        lines.append(f"{_dd_path(path)}: {value!r} -> (unset)")
    return tuple(sorted(lines))


def _dd_path(path: str) -> str:
    return path.removeprefix("root").replace("['", ".").replace("']", "").lstrip(".")


def _latest_version(remote: RemoteModel | None, mstate: ModelState | None) -> dict[str, Any] | None:
    """The newest trained version, its digests taken from the remote or, failing that, the state.

    A model about to be created (or one replacing the state's) has none, whatever the state
    remembers of the model it replaces."""
    if remote is None or (mstate is not None and mstate.remote_id and mstate.remote_id != remote.remote_id):
        return None
    recorded = {v.get("version"): v for v in (mstate.versions if mstate else [])}
    if remote is not None:
        for v in remote.versions:
            if v.status != "trained":
                continue
            rec = recorded.get(v.version, {})
            return {
                "version": v.version,
                "dataset_digest": v.dataset_digest or rec.get("dataset_digest"),
                "config_digest": v.config_digest or rec.get("config_digest"),
                "config": rec.get("config"),
                **{k: rec[k] for k in ("model_type", "base") if k in rec},
            }
    if mstate and mstate.versions:
        return mstate.versions[0]
    return None


def _short(digest: str | None) -> str:
    return (digest or "none")[:19] + "…" if digest else "none"


class ModelPlan(NamedTuple):
    """What plan_model found for one model."""

    operations: list[Operation]
    warnings: list[str]
    unmanaged: int  # remote samples modelsync did not upload, left alone
    mass: tuple[int, int] | None  # (deleted, total) when more than half the remote samples would go
    kept: int  # managed samples no longer declared, kept because of prune: none
    train: TrainDecision | None  # why the train op (if any) is planned


def plan_model(
    desired: DesiredModel,
    remote: RemoteModel | None,
    mstate: ModelState | None,
    capabilities: frozenset[str],
) -> ModelPlan:
    """The operations that make one remote model match the desired one."""
    ops: list[Operation] = []
    warnings: list[str] = []
    key = desired.key
    if remote is None:
        ops.append(
            Operation(
                "create_model",
                key,
                provider=desired.provider,
                title=desired.title,
                type=desired.type,
                purpose=desired.purpose,
                tags=desired.tags,
            )
        )
        remote_samples: list[RemoteSample] = []
        remote_classes: dict[str, str] = {}
    else:
        remote_samples = samples_with_uids(desired, remote, mstate, capabilities)
        remote_classes = remote.classes

    by_uid, copies, foreign = _group_by_uid(remote_samples)

    deletes: list[Operation] = []
    uploads: list[Operation] = []
    updates: list[Operation] = []
    kept_pairs: list[tuple[str, str]] = []  # (class, digest) of remote samples that stay, foreign included
    added = removed = 0

    def upload(sample, reason: str | None = None) -> None:
        uploads.append(
            Operation(
                "upload_sample",
                key,
                class_name=sample.class_name,
                uid=sample.uid,
                digest=sample.digest,
                size=sample.size,
                source=sample.source,
                caption=sample.caption,
                boxes=_box_dicts(sample.boxes) or None,
                reason=reason,
            )
        )

    def delete(s: RemoteSample, reason: str) -> None:
        deletes.append(
            Operation(
                "delete_sample",
                key,
                class_name=s.class_name,
                uid=s.uid,
                remote_id=s.remote_id,
                digest=_known_digest(s, mstate),
                reason=reason,
            )
        )

    for uid, want in desired.samples.items():
        first = by_uid.pop(uid, None)
        if first is None:
            upload(want)
            added += 1
            continue
        if (
            uid not in copies
            and first.digest == want.digest
            and first.class_name == want.class_name
            and first.caption == want.caption
            and not first.boxes
            and not want.boxes
        ):
            continue  # in sync, the common case at scale: what the general path below concludes, sooner
        have = copies.pop(uid, [first])
        # Prefer the copy already in the right class with the right bytes; the rest are duplicates.
        have.sort(key=lambda s: (s.class_name != want.class_name, _known_digest(s, mstate) not in (None, want.digest)))
        keep, extra = have[0], have[1:]
        for dup in extra:
            delete(dup, "duplicate of the same uid")
        digest = _known_digest(keep, mstate)
        if keep.class_name != want.class_name:
            delete(keep, f"moved to class '{want.class_name}'")
            upload(want, f"moved from class '{keep.class_name}'")
        elif digest is not None and digest != want.digest:
            delete(keep, "content changed")
            upload(want, "content changed")
        elif (want.caption or None) != (keep.caption or None) or not _same_boxes(want.boxes, keep.boxes):
            if caps.CAP_CAPTIONS in capabilities or caps.CAP_BOXES in capabilities:
                updates.append(
                    Operation(
                        "update_sample",
                        key,
                        class_name=want.class_name,
                        uid=uid,
                        remote_id=keep.remote_id,
                        caption=want.caption,
                        boxes=_box_dicts(want.boxes) or None,
                    )
                )
            else:
                delete(keep, "caption or boxes changed")
                upload(want, "caption or boxes changed")

    unmanaged = kept = 0
    for uid, first in by_uid.items():  # remote uids the spec no longer declares
        managed = _is_managed(uid, mstate)
        for s in copies.get(uid, (first,)):
            if desired.prune == "all" or (desired.prune == "managed" and managed):
                delete(s, "no longer declared")
                removed += 1
            else:
                if managed:
                    kept += 1
                else:
                    unmanaged += 1
                kept_pairs.append((s.class_name, _known_digest(s, mstate) or f"remote:{s.remote_id}"))
    for s in foreign:
        if desired.prune == "all":
            delete(s, "not uploaded by modelsync (prune: all)")
            removed += 1
        else:
            unmanaged += 1
            kept_pairs.append((s.class_name, _known_digest(s, mstate) or f"remote:{s.remote_id}"))

    # A class the spec dropped, emptied entirely by this plan, goes as one operation.
    class_deletes: list[Operation] = []
    if desired.prune != "none" and caps.CAP_DELETE_CLASS in capabilities:
        staying = {c for c, _ in kept_pairs} | set(desired.classes)
        for cls_name, cls_id in sorted(remote_classes.items()):
            if cls_name in staying or not cls_id:
                continue
            in_class = [d for d in deletes if d.class_name == cls_name]
            deletes = [d for d in deletes if d.class_name != cls_name]
            class_deletes.append(
                Operation(
                    "delete_class",
                    key,
                    class_name=cls_name,
                    remote_id=cls_id,
                    samples=len(in_class),
                    reason="no longer declared",
                )
            )

    ops.extend(sorted(deletes, key=lambda o: (o.class_name or "", o.uid or "", o.remote_id or "")))
    ops.extend(class_deletes)
    ops.extend(sorted(uploads, key=lambda o: (o.class_name or "", o.source or "", o.uid or "")))
    ops.extend(updates)

    deleted_total = sum(1 for o in deletes) + sum(o.samples or 0 for o in class_deletes)
    mass = None
    if remote_samples and deleted_total * 2 > len(remote_samples):
        mass = (deleted_total, len(remote_samples))

    training, decision = _training_ops(desired, remote, mstate, capabilities, kept_pairs, added, removed, warnings)
    ops.extend(training)
    return ModelPlan(ops, warnings, unmanaged, mass, kept, decision)


NEVER_TRAINED = "never trained"


@dataclass(frozen=True)
class TrainDecision:
    """Why the spec's training runs again: the digests it wants, and the latest trained
    version's (None: never trained). Shared by plan (the train op) and status (drift)."""

    dataset_digest: str
    config_digest: str
    latest: dict[str, Any] | None

    @property
    def dataset_changed(self) -> bool:
        return self.latest is not None and self.latest.get("dataset_digest") != self.dataset_digest

    @property
    def config_changed(self) -> bool:
        return self.latest is not None and self.latest.get("config_digest") != self.config_digest


def _training_ops(
    desired: DesiredModel,
    remote: RemoteModel | None,
    mstate: ModelState | None,
    capabilities: frozenset[str],
    kept_pairs: list[tuple[str, str]],
    added: int,
    removed: int,
    warnings: list[str],
) -> tuple[list[Operation], TrainDecision | None]:
    ops: list[Operation] = []
    t = desired.training
    key = desired.key
    # With auto training the config travels with each `train`; a separate `configure` only
    # matters when modelsync does not train, to keep the vendor's stored config declared.
    if caps.CAP_CONFIGURE in capabilities and t.config and not t.auto:
        current = remote.config if remote is not None else None
        changes = config_changes(current, t.config)
        if changes:
            ops.append(Operation("configure", key, config=dict(t.config), changes=changes))
    decision = _train_decision(desired, remote, mstate, capabilities, kept_pairs, warnings)
    if decision is None:
        return ops, None
    latest = decision.latest or {}
    ops.append(
        Operation(
            "train",
            key,
            dataset_digest=decision.dataset_digest,
            config_digest=decision.config_digest,
            previous_dataset_digest=latest.get("dataset_digest"),
            previous_config_digest=latest.get("config_digest"),
            model_type=t.model_type,
            base=t.base,
            config=dict(t.config),
            reason=_train_reason(decision, t, added, removed),
        )
    )
    return ops, decision


def _train_decision(
    desired: DesiredModel,
    remote: RemoteModel | None,
    mstate: ModelState | None,
    capabilities: frozenset[str],
    kept_pairs: list[tuple[str, str]],
    warnings: list[str],
) -> TrainDecision | None:
    """The decision to train (None: no train op): with auto training, when the dataset (the
    declared samples plus ``kept_pairs``, the remote ones that stay) or the config differs from
    the latest trained version's, or there is none."""
    t = desired.training
    key = desired.key
    if not t.auto or caps.CAP_TRAIN not in capabilities:
        return None
    if remote is not None and remote.training_status in ("queued", "training"):
        warnings.append(f"{key}: a training run is in progress on the remote; not planning another")
        return None
    pairs = [(s.class_name, s.digest) for s in desired.samples.values()] + kept_pairs
    classes_with_samples = {c for c, _ in pairs}
    if desired.purpose == "classification" and len(classes_with_samples) < 2:
        return None
    if desired.purpose == "detection" and not any(s.boxes for s in desired.samples.values()):
        warnings.append(f"{key}: detection model has no boxes; not training")
        return None
    decision = TrainDecision(dataset_digest(pairs), desired.config_digest, _latest_version(remote, mstate))
    if decision.latest is None or decision.dataset_changed or decision.config_changed:
        return decision
    return None


def _train_reason(decision: TrainDecision, training: TrainingSettings, added: int, removed: int) -> str:
    """The train op's reason: each of dataset and config that changed, with what changed (the
    config's keys, and model_type and base where the state recorded what they were)."""
    latest = decision.latest
    if latest is None:
        return NEVER_TRAINED
    parts: list[str] = []
    if decision.dataset_changed:
        detail = ", ".join(
            p
            for p in (
                f"{added} sample{'s' if added != 1 else ''} added" if added else "",
                f"{removed} removed" if removed else "",
            )
            if p
        )
        reason = f"dataset {_short(latest.get('dataset_digest'))} -> {_short(decision.dataset_digest)}"
        parts.append(reason + (f", {detail}" if detail else ""))
    if decision.config_changed:
        config = training.config
        changes = list(config_changes(latest.get("config"), config) if latest.get("config") is not None else ())
        for name, now in (("model_type", training.model_type), ("base", training.base)):
            if name in latest and latest[name] != now:
                changes.append(f"{name}: {latest[name]!r} -> {now!r}")
        reason = f"config {_short(latest.get('config_digest'))} -> {_short(decision.config_digest)}"
        parts.append(reason + (": " + "; ".join(changes) if changes else ""))
    return "; ".join(parts)


def mass_delete_warning(key: str, deleted: int, total: int) -> str:
    """The plan's warning for a mass delete (in the JSON ``warnings`` and the human output)."""
    return f"{key}: this plan removes {deleted:,} of {plural(total, 'sample')}; apply needs --allow-mass-delete"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 sample``, ``2 samples`` (``many``: the plural when it is not ``word + "s"``)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def build_plan(
    desired: dict[str, DesiredModel],
    remotes: dict[str, RemoteModel | None],
    state: State,
    capabilities: dict[str, frozenset[str]],
    *,
    targets: tuple[str, ...] = (),
    orphans: dict[str, RemoteModel | None] | None = None,
    destroy: bool = False,
) -> Plan:
    """The whole plan. ``remotes`` holds the refreshed remote of each desired model (None:
    absent); ``orphans`` the refreshed remotes of state-managed models the spec dropped.
    ``capabilities`` is keyed by provider name."""
    read: dict[str, RemoteModel | None] = {}  # what the plan was computed from, fingerprinted lazily
    plan = Plan(targets=targets, state_serial=state.serial, state_lineage=state.lineage)
    plan.fingerprints = RemoteFingerprints(read)
    for key in sorted(desired):
        if targets and key not in targets:
            continue
        model = desired[key]
        remote = remotes.get(key)
        read[key] = remote
        manages_models = caps.CAP_MODELS in capabilities[model.provider]
        if destroy:
            if remote is not None and not manages_models:
                plan.warnings.append(
                    f"{key}: provider type '{model.provider_type}' cannot delete models; left as it is"
                )
            elif remote is not None:
                plan.operations.append(_delete_model(model.key, model.provider, remote, "destroy requested"))
                if model.prevent_destroy:
                    plan.errors.append(f"{key}: lifecycle.prevent_destroy is set; refusing to delete the model")
            continue
        if remote is None and not manages_models:
            plan.errors.append(
                f"{key}: no model titled {model.title!r} on provider '{model.provider}', and provider type "
                f"'{model.provider_type}' cannot create models: create it in the vendor's own tools first"
            )
            continue
        mstate = state.models.get(key)
        found = plan_model(model, remote, mstate, capabilities[model.provider])
        plan.operations.extend(found.operations)
        plan.warnings.extend(found.warnings)
        if remote is not None:
            plan.warnings.extend(attribute_drift(model, remote))
        if found.unmanaged:
            plan.unmanaged[key] = found.unmanaged
        if found.kept:
            plan.no_longer_declared[key] = found.kept
        if found.mass:
            plan.mass_deletes[key] = found.mass
            plan.warnings.append(mass_delete_warning(key, *found.mass))
        old = (orphans or {}).get(f"{key}#previous")
        if old is not None and mstate is not None and (remote is None or mstate.remote_id != remote.remote_id):
            read[f"{key}#previous"] = old
            plan.operations.append(_delete_model(key, mstate.provider, old, "title changed; replaced"))
            if mstate.prevent_destroy or model.prevent_destroy:  # recorded, or set in the same change
                plan.errors.append(f"{key}: lifecycle.prevent_destroy is set; refusing to replace the model")
    for key, remote in sorted((orphans or {}).items()):
        if key.endswith("#previous") or (targets and key not in targets) or remote is None:
            continue
        mstate = state.models[key]
        read[key] = remote
        plan.operations.append(_delete_model(key, mstate.provider, remote, "no longer declared"))
        if mstate.prevent_destroy:
            plan.errors.append(f"{key}: lifecycle.prevent_destroy is set; refusing to delete the model")
    order = {name: i for i, name in enumerate(OP_ORDER)}
    # Stable: keeps each model's sorted order inside a phase.
    plan.operations.sort(key=lambda o: order[o.op])
    return plan


def attribute_drift(desired: DesiredModel, remote: RemoteModel) -> list[str]:
    """Model attributes (type, purpose, tags) that differ from the spec. No vendor API edits a
    model's attributes after creation, so they are reported rather than planned; a new title
    replaces the model and applies them."""
    out = []
    pairs = [
        ("type", desired.type, remote.type),
        ("purpose", desired.purpose, remote.purpose),
        ("tags", sorted(desired.tags), sorted(remote.tags)),
    ]
    for name, want, have in pairs:
        if have is None or have == [] or want == have:  # a vendor that reports no such attribute
            continue
        out.append(
            f"{desired.key}: {name} is {have!r} on the remote but {want!r} in the spec; model attributes "
            "cannot be changed after creation (a new title replaces the model with them)"
        )
    return out


def _delete_model(key: str, provider: str, remote: RemoteModel, reason: str) -> Operation:
    return Operation(
        "delete_model",
        key,
        provider=provider,
        title=remote.title,
        remote_id=remote.remote_id,
        samples=len(remote.samples),
        reason=reason,
    )
