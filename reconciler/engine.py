"""The plan pipeline: spec -> resolve -> refresh -> plan, and the staleness check for saved plans."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass

from reconciler.errors import StaleStateError, UserError
from reconciler.lockfile import check_locked
from reconciler.plan import Plan, build_plan
from reconciler.refresh import Refreshed, identities, refresh
from reconciler.resolve import Resolved, resolve
from reconciler.state import State, load_state
from reconciler.workspace import Workspace


@dataclass
class Planned:
    plan: Plan
    resolved: Resolved | None
    state: State
    refreshed: Refreshed


def check_spec(ws: Workspace, targets: tuple[str, ...] = (), *, sources: bool = False) -> None:
    """Everything validate checks: schema, semantics, provider capabilities, targets, and with
    ``sources`` that every local source exists (plan leaves that to resolve, to expand once)."""
    spec = ws.spec
    problems = ws.capability_errors()
    if sources:
        from reconciler.resolve import source_diagnostics

        problems.extend(str(d) for d in source_diagnostics(spec, targets))
    for t in targets:
        if t not in spec.models:
            known = ", ".join(sorted(spec.models)) or "none"
            problems.append(f"--target: no model '{t}' in {ws.spec_path.name} (models: {known})")
    if problems:
        raise UserError(*problems)


def capabilities(ws: Workspace) -> dict[str, frozenset[str]]:
    from reconciler.providers import provider_class

    return {name: provider_class(p.type).capabilities for name, p in ws.spec.providers.items()}


def resolve_spec(ws: Workspace, targets: tuple[str, ...] = (), progress=None) -> Resolved:
    from specs import SpecError

    try:
        return resolve(ws.spec, ws.project_dir, targets=targets, progress=progress)
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
    resolved = resolve_spec(ws, targets, progress)
    if locked:
        problems = check_locked(ws.project_dir, resolved)
        if problems:
            raise UserError(*problems)
    state = load_state(ws.project_dir)
    all_ids = {k: (ws.spec.provider_for(k)[0], m.title or k) for k, m in ws.spec.models.items()}
    all_ids.update(identities(resolved.models))
    refreshed = refresh(ws, all_ids, state, targets)
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
    return Planned(plan, resolved, state, refreshed)


def check_fresh(ws: Workspace, plan: Plan) -> Planned:
    """Refresh again and refuse ``plan`` if the spec, the state or any remote it read has changed."""
    with _kept_till_exit():
        return _check_fresh(ws, plan)


def _check_fresh(ws: Workspace, plan: Plan) -> Planned:
    check_spec(ws, plan.targets)
    if plan.spec_digest != ws.spec_digest():
        raise StaleStateError("stale plan: the spec changed since the plan was made; run plan again")
    state = load_state(ws.project_dir)
    if plan.state_serial != state.serial or (plan.state_lineage or "") != state.lineage:
        raise StaleStateError(
            f"stale plan: the state changed since the plan was made (serial {plan.state_serial} -> "
            f"{state.serial}); run plan again"
        )
    all_ids = {k: (ws.spec.provider_for(k)[0], m.title or k) for k, m in ws.spec.models.items()}
    refreshed = refresh(ws, all_ids, state, plan.targets)
    for key, fingerprint in plan.fingerprints.items():
        remote = refreshed.remotes.get(key) or refreshed.orphans.get(key)
        now = remote.fingerprint() if remote else "absent"
        if now != fingerprint:
            raise StaleStateError(f"stale plan: remote model '{key}' changed since the plan was made; run plan again")
    return Planned(plan, None, state, refreshed)
