"""Read-side commands: versions, predict, infer. Each finds the model, then asks its provider."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from reconciler.errors import UserError
from reconciler.model import ImageInput, InferenceStatus, Prediction
from reconciler.providers import base as caps
from reconciler.providers.base import Provider, ProviderError
from reconciler.sources import is_url
from reconciler.state import load_state
from reconciler.workspace import Workspace


def locate_model(ws: Workspace, key: str) -> tuple[Provider, str]:
    """The provider and remote id of a model declared in the spec (one list call)."""
    spec = ws.spec
    if key not in spec.models:
        known = ", ".join(sorted(spec.models)) or "none"
        raise UserError(f"no model '{key}' in {ws.spec_path.name} (models: {known})")
    provider_name, _ = spec.provider_for(key)
    provider = ws.provider(provider_name)
    title = spec.models[key].title or key
    try:
        matches = [m for m in provider.list_models() if m.title == title]
    except ProviderError as exc:
        raise UserError(f"{key}: {exc}") from None
    if not matches:
        if caps.CAP_MODELS not in provider.capabilities:  # e.g. annolab: models are built in the vendor's tools
            raise UserError(
                f"model '{key}': no model titled '{title}' on provider '{provider_name}'; {provider.type} models "
                f"are built in {provider.type}'s own tools, not by modelsync: check the title"
            )
        raise UserError(f"model '{key}' does not exist on provider '{provider_name}' yet; run `modelsync apply`")
    return provider, matches[0].remote_id


def list_versions(ws: Workspace, key: str) -> list[dict[str, Any]]:
    provider, remote_id = locate_model(ws, key)
    try:
        remote = provider.view_model(remote_id)
        listed = provider.list_versions(remote_id) or remote.versions
    except ProviderError as exc:
        raise UserError(f"versions {key}: {exc}") from None
    mstate = load_state(ws.project_dir).models.get(key)
    recorded = {v["version"]: v for v in (mstate.versions if mstate else [])}
    rows = []
    for v in listed:
        if v.status != "trained":
            continue
        rec = recorded.pop(v.version, {})
        row = v.to_json()
        row["dataset_digest"] = row["dataset_digest"] or rec.get("dataset_digest")
        row["config_digest"] = row["config_digest"] or rec.get("config_digest")
        row["metrics"] = row["metrics"] or rec.get("metrics") or {}
        rows.append(row)
    for rec in recorded.values():  # versions only the state remembers (vendors without a version list)
        rows.append({k: rec.get(k) for k in ("version", "dataset_digest", "config_digest", "trained_at", "metrics")})
    for row in rows:  # the contract's {"accuracy", ...}: null where the vendor reports none (astica)
        row["metrics"] = {"accuracy": None, **(row.get("metrics") or {})}
    rows.sort(key=lambda r: r["version"] or "", reverse=True)
    return rows


def render_versions(key: str, rows: list[dict[str, Any]], out: Any) -> None:
    if not rows:
        out.print(f"{key}: no trained versions yet")
        return
    width = max(17, *(len(r["version"] or "") for r in rows))  # Autogon's names are longer: _p<project>
    out.print(f"{'VERSION':<{width}} {'TRAINED AT':<21} {'ACCURACY':>8}  DATASET              CONFIG")
    for r in rows:
        acc = (r.get("metrics") or {}).get("accuracy")
        acc_text = f"{acc:.1%}" if isinstance(acc, int | float) else "-"
        out.print(
            f"{r['version'] or '-':<{width}} {(r.get('trained_at') or '-')[:19]:<21} {acc_text:>8}  "
            f"{(r.get('dataset_digest') or '-')[:19]:<20} {(r.get('config_digest') or '-')[:19]}"
        )


def _load_inputs(ws: Workspace, inputs: list[str]) -> list[ImageInput]:
    """Each input's bytes, named as the user gave it; one that is not an image is refused here,
    by that name (a vendor would only say which position of its batch it could not read)."""
    images = [_load_input(ws, text) for text in inputs]
    from reconciler.local.magic import NOT_AN_IMAGE, sniff

    for image in images:
        if image.data is not None and sniff(image.data[:32]) is None:
            raise UserError(f"{image.name}: {NOT_AN_IMAGE}")
    return images


def _load_input(ws: Workspace, text: str) -> ImageInput:
    if is_url(text):
        from reconciler.fetch import FetchError, fetch_url

        try:
            data = fetch_url(text)
        except FetchError as exc:
            raise UserError(f"cannot fetch {exc}") from None
        return ImageInput(name=text, data=data, url=text)
    path = Path(text)
    if not path.is_absolute():
        path = ws.workdir / path  # -C's directory, as git -C does
    try:
        return ImageInput(name=text, data=path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"no such file: {text}") from None
    except IsADirectoryError:
        raise UserError(f"{text}: is a directory, not an image") from None
    except OSError as exc:
        raise UserError(f"cannot read {text}: {exc.strerror}") from None


def predict(
    ws: Workspace,
    key: str,
    inputs: list[str],
    version: str | None,
    confidence_thresh: float | None,
    overlap_thresh: float | None,
) -> tuple[list[Prediction], bool]:
    provider, remote_id = locate_model(ws, key)
    images = _load_inputs(ws, inputs)
    try:
        preds = provider.predict(
            remote_id, version, images, confidence_thresh=confidence_thresh, overlap_thresh=overlap_thresh
        )
    except ProviderError as exc:  # NotFound too; the service's "model 7" is the spec's model here
        raise UserError(f"predict {key}: {str(exc).replace(f'model {remote_id}:', f'model {key!r}:')}") from None
    return preds, ws.spec.models[key].purpose == "detection"


def render_predictions(preds: list[Prediction], out: Any) -> None:
    for p in preds:
        label = p.label if p.label is not None else "(nothing found)"
        out.print(f"{p.input}: {label} ({p.confidence:.1%})")
        for b in p.boxes:
            out.print(f"  box {b.label} ({(b.confidence or 0):.1%}) at x={b.x:.0f} y={b.y:.0f} w={b.w:.0f} h={b.h:.0f}")


def run_inference(
    ws: Workspace,
    key: str,
    sources: list[str],
    version: str | None,
    wait: bool,
    timeout: float,
    err: Any,
    job: str | None = None,
) -> InferenceStatus:
    """Start a batch inference job on ``sources`` (or follow the existing ``job``), and poll it
    to its end when ``wait``."""
    provider, remote_id = locate_model(ws, key)
    if not wait and job is None and not provider.jobs_outlive_the_process:
        raise UserError(
            f"infer {key}: provider type '{provider.type}' runs inference jobs inside this command, so "
            "--no-wait would end the job with it; use --wait, or `modelsync serve` and a vendor provider"
        )
    images = _load_inputs(ws, sources) if job is None else []
    try:
        job_id = job if job is not None else provider.start_inference(remote_id, version, images)
        status = provider.inference_status(job_id)
        deadline = time.monotonic() + timeout
        interval = getattr(provider, "poll_interval", 1.0)
        last = None
        while wait and not status.finished:
            if time.monotonic() > deadline:
                raise UserError(f"infer {key}: job {job_id} still {status.state} after {timeout:.0f} s")
            if err is not None and (status.state, status.done) != last:
                err.print(f"[dim]job {job_id}: {status.state} {status.done}/{status.total}[/dim]")
                last = (status.state, status.done)
            time.sleep(interval)
            status = provider.inference_status(job_id)
    except ProviderError as exc:
        raise UserError(f"infer {key}: {exc}") from None
    return status
