"""Spec -> desired state: expand every source, hash every sample, derive uids.

This is the I/O edge of planning (stat, read, fetch). Its output, a dict of
DesiredModel, is pure data that diff and plan consume.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.fetch import FetchError, UrlCache
from reconciler.hashing import FileStat, HashCache
from reconciler.model import Box, DesiredModel, DesiredSample, TrainingSettings, derived_uid
from reconciler.sources import SourceError, SourceItem, expand

SpecPath = tuple[str | int, ...]


@dataclass
class Resolved:
    """The desired state, and what each source resolved to (for the lock file)."""

    models: dict[str, DesiredModel]
    sources: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)  # model -> source -> (digest, size)


@dataclass(slots=True)
class _Pending:
    """A sample whose digest is not known yet."""

    model: str
    class_name: str
    item: SourceItem
    spec_path: SpecPath
    uid: str | None
    caption: str | None
    boxes: tuple[Box, ...]
    digest: str = ""
    size: int = 0


def resolve(spec: Any, workdir: Path, *, targets: Iterable[str] = (), progress=None) -> Resolved:
    """Resolve ``spec`` (a loaded specs.Spec). Raises specs.SpecError listing every bad source."""
    from specs import SpecError

    wanted = set(targets)
    base_dir = spec.base_dir
    diagnostics = []
    pending: list[_Pending] = []
    for key, model in spec.models.items():
        if wanted and key not in wanted:
            continue
        for class_name, class_spec in model.classes.items():
            for index, entry in enumerate(class_spec.samples):
                spec_path: SpecPath = ("models", key, "classes", class_name, "samples", index)
                try:
                    pending.extend(_expand_entry(key, class_name, entry, spec_path, base_dir))
                except SourceError as exc:
                    diagnostics.append(spec.diagnostic(spec_path, str(exc)))
    if diagnostics:
        raise SpecError(diagnostics)

    cache_dir = workdir / ".modelsync" / "cache"
    _hash_files([p for p in pending if p.item.path], cache_dir, spec, diagnostics, progress)
    _fetch_urls([p for p in pending if p.item.url], cache_dir, spec, diagnostics)
    if diagnostics:
        raise SpecError(diagnostics)

    resolved = Resolved(models={})
    by_model: dict[str, list[_Pending]] = {}
    for p in pending:
        by_model.setdefault(p.model, []).append(p)
    for key, model in spec.models.items():
        if wanted and key not in wanted:
            continue
        samples, sources = _assemble(by_model.get(key, []), spec, diagnostics)
        resolved.sources[key] = sources
        provider_name, provider_spec = spec.provider_for(key)
        t = model.training
        resolved.models[key] = DesiredModel(
            key=key,
            provider=provider_name,
            provider_type=provider_spec.type,
            title=model.title or key,
            type=model.type,
            purpose=model.purpose,
            tags=tuple(model.tags),
            classes=tuple(sorted(model.classes)),
            samples=samples,
            training=TrainingSettings(auto=t.auto, model_type=t.model_type, base=t.base, config=dict(t.config)),
            prevent_destroy=model.lifecycle.prevent_destroy,
            prune=model.lifecycle.prune,
        )
    if diagnostics:
        raise SpecError(diagnostics)
    return resolved


def _expand_entry(key: str, class_name: str, entry: Any, spec_path: SpecPath, base_dir: Path) -> list[_Pending]:
    if isinstance(entry, str):
        return [_Pending(key, class_name, item, spec_path, None, None, ()) for item in expand(entry, base_dir)]
    text = entry.path if entry.path is not None else entry.url
    items = expand(text, base_dir, single=entry.uid is not None)
    boxes = tuple(Box(b.label or class_name, b.x, b.y, b.w, b.h) for b in entry.boxes)
    if boxes and len(items) > 1:
        raise SourceError(f"boxes belong to one image, but {text} names {len(items)} files")
    return [_Pending(key, class_name, item, spec_path, entry.uid, entry.caption, boxes) for item in items]


def _hash_files(pending: list[_Pending], cache_dir: Path, spec: Any, diagnostics: list, progress) -> None:
    if not pending:
        return
    cache = HashCache(cache_dir / "hashes.json")
    stats: list[FileStat] = []
    ok: list[_Pending] = []
    for p in pending:
        try:
            st = os.stat(p.item.path)  # type: ignore[arg-type]
        except OSError as exc:
            diagnostics.append(spec.diagnostic(p.spec_path, f"cannot read {p.item.display}: {exc.strerror}"))
            continue
        stats.append(FileStat(p.item.path, st.st_size, st.st_mtime_ns, st.st_ino))  # type: ignore[arg-type]
        ok.append(p)
    if progress is not None:
        uncached = sum(1 for st in stats if cache.lookup(st) is None)
        if uncached:
            progress(f"hashing {uncached:,} files")
    try:
        digests = cache.digests(stats)
    except OSError as exc:
        name = getattr(exc, "filename", None) or "a sample"
        diagnostics.append(spec.diagnostic(("models",), f"cannot read {name}: {exc.strerror}"))
        return
    for p, st, digest in zip(ok, stats, digests, strict=True):
        p.digest, p.size = digest, st.size
    cache.save()


def _fetch_urls(pending: list[_Pending], cache_dir: Path, spec: Any, diagnostics: list) -> None:
    if not pending:
        return
    cache = UrlCache(cache_dir / "urls")
    urls = sorted({p.item.url for p in pending})  # type: ignore[misc]
    results: dict[str, tuple[str, int] | str] = {}

    def fetch(url: str) -> None:
        try:
            results[url] = cache.resolve(url)
        except FetchError as exc:
            results[url] = str(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(fetch, urls))
    cache.save()
    for p in pending:
        got = results[p.item.url]  # type: ignore[index]
        if isinstance(got, str):
            diagnostics.append(spec.diagnostic(p.spec_path, f"cannot fetch {got}"))
        else:
            p.digest, p.size = got


def _assemble(
    pending: list[_Pending], spec: Any, diagnostics: list
) -> tuple[dict[str, DesiredSample], dict[str, tuple[str, int]]]:
    """Build the uid -> sample map, catching the same image declared in two classes."""
    samples: dict[str, DesiredSample] = {}
    where: dict[str, _Pending] = {}
    sources: dict[str, tuple[str, int]] = {}
    for p in pending:
        sources[p.item.display] = (p.digest, p.size)
        uid = p.uid or derived_uid(p.digest)
        prior = where.get(uid)
        if prior is not None:
            if p.uid is None and prior.uid is None and prior.class_name == p.class_name:
                continue  # the same bytes reached twice in one class (overlapping globs): one sample
            if p.uid is None and prior.uid is None:
                msg = (
                    f"{p.item.display} is the same image as {prior.item.display} in class "
                    f"'{prior.class_name}'; an image can belong to one class only"
                )
            else:
                msg = f"uid '{uid}' is already used by {prior.item.display} in class '{prior.class_name}'"
            diagnostics.append(spec.diagnostic(p.spec_path, msg))
            continue
        where[uid] = p
        samples[uid] = DesiredSample(
            uid=uid,
            class_name=p.class_name,
            digest=p.digest,
            size=p.size,
            source=p.item.display,
            path=p.item.path,
            url=p.item.url,
            caption=p.caption,
            boxes=p.boxes,
            user_uid=p.uid is not None,
        )
    return samples, sources
