"""Refresh: read the remote state of every model the plan concerns.

Cost is fixed by the number of models, never by the number of samples: one list
call per provider, then one view per model (DESIGN.md's refresh target).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from reconciler.errors import UserError
from reconciler.model import DesiredModel, ModelSummary, RemoteModel
from reconciler.providers.base import ProviderError
from reconciler.state import State
from reconciler.workspace import Workspace


@dataclass
class Refreshed:
    remotes: dict[str, RemoteModel | None] = field(default_factory=dict)  # desired key -> remote (None: absent)
    orphans: dict[str, RemoteModel | None] = field(default_factory=dict)  # state-only key -> remote
    gone: list[str] = field(default_factory=list)  # state models whose remote disappeared

    def remote_id(self, key: str) -> str | None:
        r = self.remotes.get(key) or self.orphans.get(key)
        return r.remote_id if r else None


def identities(desired: dict[str, DesiredModel]) -> dict[str, tuple[str, str]]:
    """model key -> (provider name, remote title): all refresh needs to know of a model."""
    return {k: (m.provider, m.title) for k, m in desired.items()}


def refresh(
    ws: Workspace, desired: dict[str, tuple[str, str]], state: State, targets: tuple[str, ...] = ()
) -> Refreshed:
    """``desired`` maps each declared model key to (provider, title)."""
    out = Refreshed()
    wanted = {k: m for k, m in desired.items() if not targets or k in targets}
    orphan_keys = [k for k in state.models if k not in desired and (not targets or k in targets)]
    providers = sorted({p for p, _ in wanted.values()} | {state.models[k].provider for k in orphan_keys})
    providers = [p for p in providers if p in ws.spec.providers]

    listings: dict[str, list[ModelSummary]] = {}

    def list_one(name: str) -> None:
        listings[name] = ws.provider(name).list_models()

    _run_all(list_one, providers, "list models")

    to_view: dict[str, tuple[str, str]] = {}  # key -> (provider, remote id)
    for key, (provider, title) in wanted.items():
        matches = [m for m in listings.get(provider, []) if m.title == title]
        if len(matches) > 1:
            ids = ", ".join(m.remote_id for m in matches)
            raise UserError(
                f"{key}: {len(matches)} remote models on provider '{provider}' are titled "
                f"'{title}' (ids {ids}); titles must be unique: rename or remove the extra ones"
            )
        if matches:
            to_view[key] = (provider, matches[0].remote_id)
        else:
            out.remotes[key] = None
        mstate = state.models.get(key)
        renamed = mstate and mstate.provider == provider and (not matches or mstate.remote_id != matches[0].remote_id)
        if renamed and any(m.remote_id == mstate.remote_id for m in listings.get(provider, [])):
            # The spec retitled a model modelsync created: the old one is replaced.
            to_view[f"{key}#previous"] = (provider, mstate.remote_id)
    for key in orphan_keys:
        mstate = state.models[key]
        if mstate.provider not in listings:
            out.gone.append(key)
            continue
        if any(m.remote_id == mstate.remote_id for m in listings[mstate.provider]):
            to_view[key] = (mstate.provider, mstate.remote_id)
        else:
            out.gone.append(key)

    views: dict[str, RemoteModel] = {}

    def view_one(key: str) -> None:
        provider, remote_id = to_view[key]
        views[key] = ws.provider(provider).view_model(remote_id)

    _run_all(view_one, list(to_view), "view model")
    for key, remote in views.items():
        if key in wanted:
            out.remotes[key] = remote
        else:
            out.orphans[key] = remote
    return out


def _run_all(fn, items: list[str], what: str) -> None:
    if not items:
        return
    errors: list[str] = []

    def guarded(item: str) -> None:
        try:
            fn(item)
        except ProviderError as exc:
            errors.append(f"refresh: {what} '{item.split('#')[0]}': {exc}")

    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        list(pool.map(guarded, items))
    if errors:
        raise UserError(*sorted(errors))
