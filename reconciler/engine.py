"""The plan pipeline: spec -> resolve -> refresh -> plan, and the staleness check for saved plans."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from reconciler.errors import StaleStateError, UserError
from reconciler.lockfile import LockDigests, check_locked, read_lock
from reconciler.model import RemoteModel, derived_uid
from reconciler.plan import Plan, build_plan, planned_samples
from reconciler.refresh import Refreshed, refresh
from reconciler.resolve import Resolved, resolve
from reconciler.sources import Walker
from reconciler.state import ModelState, State, load_state
from reconciler.walkahead import WalkAhead, spec_directories
from reconciler.workspace import Workspace


@dataclass
class Planned:
    plan: Plan
    resolved: Resolved | None  # what the plan saw: the lock file is written from it after apply
    state: State
    refreshed: Refreshed
    # apply PLANFILE only: why the sources could not be checked against the plan (a source that
    # cannot be read or fetched now); the apply goes on, that source fails its own upload, and
    # the lock file is left alone
    unverified: tuple[str, ...] = ()


def check_spec(ws: Workspace, targets: tuple[str, ...] = (), *, sources: bool = False) -> None:
    """Everything validate checks: schema, semantics, provider capabilities, targets, and with
    ``sources`` that every local source exists (plan leaves that to resolve, to expand once).
    With ``sources``, a spec that fails its schema still has its sources checked, so that a
    typo in one place does not hide a missing file in another."""
    try:
        spec = ws.spec
    except UserError:
        if sources and ws.spec_error is not None and ws.spec_error.draft is not None:
            from reconciler.resolve import draft_source_diagnostics

            found = list(ws.spec_error.diagnostics)
            found += draft_source_diagnostics(ws.spec_error.draft, targets, {d.path for d in found})
            raise UserError(*(str(d) for d in sorted(found, key=lambda d: (d.line, d.col)))) from None
        raise
    problems = ws.capability_errors()
    if sources:
        from reconciler.resolve import source_diagnostics

        problems.extend(str(d) for d in source_diagnostics(spec, targets))
    undeclared = [t for t in targets if t not in spec.models]
    if undeclared:  # a model the spec dropped but the state records can be named (to delete it)
        recorded = load_state(ws.project_dir).models
        for t in undeclared:
            if t not in recorded:
                known = ", ".join(sorted(spec.models)) or "none"
                problems.append(f"--target: no model '{t}' in {ws.spec_path.name} (models: {known})")
    if problems:
        raise UserError(*problems)


def capabilities(ws: Workspace) -> dict[str, frozenset[str]]:
    from reconciler.providers import provider_class

    return {name: provider_class(p.type).capabilities for name, p in ws.spec.providers.items()}


def resolve_spec(ws: Workspace, targets: tuple[str, ...] = (), progress=None, walk: Walker | None = None) -> Resolved:
    from specs import SpecError

    try:
        return resolve(ws.spec, ws.project_dir, targets=targets, progress=progress, walk=walk)
    except SpecError as exc:
        raise UserError(*(str(d) for d in exc.diagnostics)) from None


@contextlib.contextmanager
def _kept_till_exit() -> Iterator[None]:
    """The cyclic GC paused while planning, and what the plan built frozen afterwards.

    A 100k-sample plan builds a few hundred thousand containers (samples, remote samples,
    rows) that live until the command ends, none in a reference cycle. The collector would
    walk them on each young collection and again in the older ones (~0.1 s a pass at 100k,
    measured); frozen (gc.freeze), no collection looks at them again. cli.main() unfreezes
    everything when the command returns to an in-process caller.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def compute_plan(
    ws: Workspace,
    targets: tuple[str, ...] = (),
    *,
    locked: bool = False,
    destroy: bool = False,
    progress=None,
) -> Planned:
    with _kept_till_exit():
        return _compute_plan(ws, targets, locked=locked, destroy=destroy, progress=progress)


def _compute_plan(ws: Workspace, targets: tuple[str, ...], *, locked: bool, destroy: bool, progress) -> Planned:
    check_spec(ws, targets)
    # The directories are walked in a second process (see walkahead) while the state is read,
    # and the remote too when reading it sends nothing. The spec's own errors (a source that
    # does not resolve, a lock mismatch) still come first.
    with WalkAhead(spec_directories(ws.spec, targets)) as walk:
        state = load_state(ws.project_dir)
        early = _refresh_early(ws, state, targets)
        resolved = resolve_spec(ws, targets, progress, walk)
    if locked:
        problems = check_locked(ws.project_dir, resolved)
        if problems:
            raise UserError(*problems)
    if isinstance(early, Exception):
        raise early
    refreshed = early or _refresh_spec(ws, state, targets)
    plan = build_plan(
        resolved.models,
        refreshed.remotes,
        state,
        capabilities(ws),
        targets=targets,
        orphans=refreshed.orphans,
        destroy=destroy,
    )
    plan.spec_digest = ws.spec_digest()
    plan.source_digests = LockDigests(resolved)  # computed only if the plan is saved or printed as JSON
    return Planned(plan, resolved, state, refreshed)


def _refresh_spec(ws: Workspace, state: State, targets: tuple[str, ...]) -> Refreshed:
    """Refresh every model the spec declares; the identities come from the spec alone, so this
    needs no resolved sources."""
    ids = {k: (ws.spec.provider_for(k)[0], m.title or k) for k, m in ws.spec.models.items()}
    return refresh(ws, ids, state, targets)


def _refresh_early(ws: Workspace, state: State, targets: tuple[str, ...]) -> Refreshed | Exception | None:
    """The refresh, run before the sources are resolved when that sends nothing off the machine
    (every provider of the spec reads locally: Provider.reads_locally), else None. A failure is
    returned, for the caller to raise after the spec's own errors."""
    from reconciler.providers import provider_class

    if not all(provider_class(p.type).reads_locally for p in ws.spec.providers.values()):
        return None  # a vendor: a spec whose sources do not resolve must send nothing
    try:
        return _refresh_spec(ws, state, targets)
    except Exception as exc:  # noqa: BLE001 (raised by the caller, after the spec's own errors)
        return exc


def check_fresh(ws: Workspace, plan: Plan, progress=None) -> Planned:
    """Resolve and refresh again, and refuse ``plan`` if the spec, the state, any source or any
    remote it read has changed. The result's ``resolved`` is then what the plan saw."""
    with _kept_till_exit():
        return _check_fresh(ws, plan, progress)


def _check_fresh(ws: Workspace, plan: Plan, progress) -> Planned:
    check_spec(ws, plan.targets)
    if plan.spec_digest != ws.spec_digest():
        raise StaleStateError("stale plan: the spec changed since the plan was made; run plan again")
    if plan.source_digests is None:
        raise StaleStateError(
            "stale plan: the plan file does not record what its sources resolved to "
            "(an older modelsync made it); run plan again"
        )
    state = load_state(ws.project_dir)
    if plan.state_serial != state.serial or (plan.state_lineage or "") != state.lineage:
        raise StaleStateError(
            f"stale plan: the state changed since the plan was made (serial {plan.state_serial} -> "
            f"{state.serial}); run plan again"
        )
    resolved: Resolved | None = None
    unverified: tuple[str, ...] = ()
    each: dict[str, Resolved] = {}  # when the whole spec does not resolve: the models that still do
    with WalkAhead(spec_directories(ws.spec, plan.targets)) as walk:
        early = _refresh_early(ws, state, plan.targets)
        try:
            resolved = resolve_spec(ws, plan.targets, progress, walk)
        except UserError as exc:
            unverified = tuple(exc.lines)
            for key in plan.targets or tuple(ws.spec.models):
                with contextlib.suppress(UserError):
                    each[key] = resolve_spec(ws, (key,))
    if isinstance(early, Exception):
        raise early
    refreshed = early or _refresh_spec(ws, state, plan.targets)
    for key, fingerprint in plan.fingerprints.items():
        remote = refreshed.remotes.get(key) or refreshed.orphans.get(key)
        now = remote.fingerprint() if remote else "absent"
        if now != fingerprint:
            raise StaleStateError(f"stale plan: remote model '{key}' changed since the plan was made; run plan again")
    recorded = plan.source_digests
    if resolved is not None:
        digests = LockDigests(resolved)
        changed = sorted(k for k in set(digests) | set(recorded) if digests.get(k) != recorded.get(k))
        if changed:
            raise StaleStateError(*_source_changes(ws, plan, changed, resolved, refreshed, state))
    # A source that cannot be read now (its upload will fail and name it) must not hide a
    # change in another model: each model that still resolves is checked on its own.
    for key, part in sorted(each.items()):
        if LockDigests(part).get(key) != recorded.get(key):
            raise StaleStateError(*_source_changes(ws, plan, [key], part, refreshed, state))
    refusals = protected_deletes(ws, plan, state)
    if refusals:
        raise UserError(*refusals)
    return Planned(plan, resolved, state, refreshed, unverified)


def protected_deletes(ws: Workspace, plan: Plan, state: State) -> list[str]:
    """A saved plan's deletes of models under ``lifecycle.prevent_destroy``, as errors.

    apply refuses a plan file that carries errors; this catches one whose errors were edited
    out, or one written by hand. Protected: so declared in the spec, or so recorded in the state
    (a model since dropped from the spec keeps its rule), as build_plan decides it."""
    out = []
    for op in plan.operations:
        if op.op != "delete_model":
            continue
        declared = ws.spec.models.get(op.model)
        mstate = state.models.get(op.model)
        if (declared is not None and declared.lifecycle.prevent_destroy) or (mstate and mstate.prevent_destroy):
            verb = "replace" if declared is not None else "delete"
            out.append(f"{op.model}: lifecycle.prevent_destroy is set; refusing to {verb} the model")
    return out


# At most this many changed sources are named when a saved plan is refused.
SHOWN_SOURCE_CHANGES = 10


def _source_changes(
    ws: Workspace, plan: Plan, keys: list[str], resolved: Resolved, refreshed: Refreshed, state: State
) -> list[str]:
    """One line per source that differs from what ``plan`` saw, for the models in ``keys``.

    The plan records only a digest per model; a source is named when it certainly differs:
    an upload planned with other bytes, or bytes that neither the remote (unchanged since the
    plan: its fingerprint was checked) nor the plan's uploads hold. A change that cannot be
    told apart that way (a file renamed, or replaced by bytes already uploaded) names the model."""
    try:
        lock = (read_lock(ws.project_dir) or {}).get("models", {})
    except UserError:
        lock = {}
    lines: list[str] = []
    for key in keys:
        named = []
        if key in resolved.models:
            remote = refreshed.remotes.get(key)
            named = _changed_sources(plan, key, resolved, remote, state.models.get(key), lock.get(key))
        if named:
            lines.extend(f"stale plan: {key}: source {source} {what} since the plan was made" for source, what in named)
        else:
            lines.append(f"stale plan: the sources of model '{key}' changed since the plan was made")
    if len(lines) > SHOWN_SOURCE_CHANGES:
        lines[SHOWN_SOURCE_CHANGES:] = [f"stale plan: and {len(lines) - SHOWN_SOURCE_CHANGES} more source changes"]
    lines[-1] += "; run plan again"
    return lines


def _changed_sources(
    plan: Plan,
    key: str,
    resolved: Resolved,
    remote: RemoteModel | None,
    mstate: ModelState | None,
    locked: Any,  # the model's entry in modelsync.lock as read: any JSON value, or None
) -> list[tuple[str, str]]:
    """(source, what happened) for each source of model ``key`` that certainly differs from the plan."""
    uploads = {
        op.source: op.digest for op in plan.operations if op.op == "upload_sample" and op.model == key and op.source
    }
    seen = planned_samples(plan, key, remote, mstate)
    model = resolved.models[key]
    by_source = {s.source: s for s in model.samples.values()}
    current = resolved.sources.get(key, {})
    locked_sources = locked.get("sources") if isinstance(locked, dict) else None
    if not isinstance(locked_sources, dict):  # no lock, or a hand-edited one: name without it
        locked_sources = None
    out: list[tuple[str, str]] = []
    for source, (digest, _size) in sorted(current.items()):
        if source in uploads:
            if uploads[source] != digest:
                out.append((source, "changed"))
            continue
        sample = by_source.get(source)
        if sample is None:  # a second file with a sample's bytes, in its class
            sample = model.samples.get(derived_uid(digest))
        if sample is None:
            continue
        was = seen.get(sample.uid)
        if was is None or was[0] != sample.class_name or was[1] not in (None, digest):
            if locked_sources is None:
                out.append((source, "changed or was added"))
            else:
                out.append((source, "changed" if source in locked_sources else "was added"))
    removed = set(uploads) - set(current)
    if locked_sources and model.prune != "none":
        # A locked source gone whose bytes the plan kept and nothing declares now: the plan saw
        # them declared (with prune, it deletes managed samples it does not see declared).
        for source, pin in locked_sources.items():
            digest = pin.get("digest") if isinstance(pin, dict) else None
            if source in current or not isinstance(digest, str):
                continue
            uid = derived_uid(digest)
            if uid in seen and uid not in model.samples:
                removed.add(source)
    out.extend((source, "was removed") for source in sorted(removed))
    return out
