"""Spec -> desired state: expand every source, hash every sample, derive uids.

This is the I/O edge of planning (stat, read, fetch). Its output, a dict of
DesiredModel, is pure data that diff and plan consume.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from pathlib import Path
from typing import Any

from reconciler.fetch import FetchError, UrlCache
from reconciler.hashing import Hasher, NotAnImageError, StatColumns
from reconciler.local.magic import NOT_AN_IMAGE
from reconciler.model import Box, DesiredModel, DesiredSample, TrainingSettings, derived_uid
from reconciler.sources import Items, SourceError, Walker, expand, is_url
from specs.diagnostics import format_path

SpecPath = tuple[str | int, ...]


@dataclass
class Resolved:
    """The desired state, and what each source resolved to (for the lock file)."""

    models: dict[str, DesiredModel]
    # Sources that are not a sample's own (a second file with the same bytes in the same
    # class): the lock file pins them too. The rest is derived from the samples on demand,
    # so a plan, which never writes the lock file, does not build a 100k-entry map.
    extra_sources: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)

    @cached_property
    def sources(self) -> dict[str, dict[str, tuple[str, int]]]:
        """model -> source (as shown) -> (digest, size), for every declared source."""
        out = {}
        for key, model in self.models.items():
            pinned = {s.source: (s.digest, s.size) for s in model.samples.values()}
            pinned.update(self.extra_sources.get(key, {}))
            out[key] = pinned
        return out


@dataclass(slots=True)
class _Entry:
    """One spec entry (a source string or mapping) and the items it expanded to.

    Per entry, not per sample: a directory entry of 100k files shares everything but
    the item, and building one object per sample was a measurable share of a no-op plan.
    """

    model: str
    class_name: str
    spec_path: SpecPath
    uid: str | None
    caption: str | None
    boxes: tuple[Box, ...]
    items: Items
    digests: list[str | None] = field(default_factory=list)  # parallel to items; None: unresolved

    @property
    def is_url(self) -> bool:
        return bool(self.items.url) and self.items.url[0] is not None


def resolve(
    spec: Any, workdir: Path, *, targets: Iterable[str] = (), progress=None, walk: Walker | None = None
) -> Resolved:
    """Resolve ``spec`` (a loaded specs.Spec). Raises specs.SpecError listing every bad source.
    ``walk`` lists directory sources (default: sources.walk_images)."""
    with _gc_paused():
        return _resolve(spec, workdir, set(targets), progress, walk)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Resolving 100k samples allocates a few hundred thousand tuples and records, none in a
    cycle; the cyclic collector would run every 700 of them and walk the growing heap each
    time (~0.3 s of a 1.3 s resolve, measured). Collect later instead."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _resolve(spec: Any, workdir: Path, wanted: set[str], progress, walk: Walker | None) -> Resolved:
    from specs import SpecError

    base_dir = spec.base_dir
    diagnostics = []
    unreadable: list = []  # files that cannot be stat-ed: reported once every source expands
    entries: list[_Entry] = []
    cache_dir = workdir / ".modelsync" / "cache"
    # Each local source's files start hashing (on worker processes) as soon as it is expanded,
    # while the next one is walked: a first plan keeps both cores busy.
    with Hasher(cache_dir / "hashes.json") as hasher:
        for key, class_name, entry, spec_path in declared_sources(spec, wanted):
            try:
                e = _expand_entry(key, class_name, entry, spec_path, base_dir, walk)
            except SourceError as exc:
                diagnostics.append(spec.diagnostic(spec_path, str(exc)))
                continue
            entries.append(e)
            if not e.is_url and not diagnostics:
                _start_hashing(e, hasher, spec, unreadable)
        if diagnostics:
            raise SpecError(diagnostics)
        diagnostics.extend(unreadable)
        _finish_hashing([e for e in entries if not e.is_url], hasher, spec, diagnostics, progress)
    _fetch_urls([e for e in entries if e.is_url], cache_dir, spec, diagnostics)
    if diagnostics:
        raise SpecError(diagnostics)

    resolved = Resolved(models={})
    by_model: dict[str, list[_Entry]] = {}
    for e in entries:
        by_model.setdefault(e.model, []).append(e)
    for key, model in spec.models.items():
        if wanted and key not in wanted:
            continue
        samples, extra = _assemble(by_model.get(key, []), spec, diagnostics)
        if extra:
            resolved.extra_sources[key] = extra
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


def _expand_entry(
    key: str, class_name: str, entry: Any, spec_path: SpecPath, base_dir: Path, walk: Walker | None
) -> _Entry:
    items, boxes = _expand_source(class_name, entry, base_dir, walk)
    if isinstance(entry, str):
        return _Entry(key, class_name, spec_path, None, None, boxes, items)
    return _Entry(key, class_name, spec_path, entry.uid, entry.caption, boxes, items)


def _expand_source(
    class_name: str, entry: Any, base_dir: Path, walk: Walker | None = None
) -> tuple[Items, tuple[Box, ...]]:
    """The items one spec entry (a source string or mapping) names, and its boxes; SourceError
    if it names nothing usable."""
    text, single = source_text(entry)
    items = expand(text, base_dir, single=single, walk=walk)
    if isinstance(entry, str):
        return items, ()
    boxes = tuple(Box(b.label or class_name, b.x, b.y, b.w, b.h) for b in entry.boxes)
    if boxes and len(items.display) > 1:
        raise SourceError(f"boxes belong to one image, but {text} names {len(items.display)} files")
    return items, boxes


# A progress line at most this often while hashing.
PROGRESS_EVERY_SECONDS = 2.0


def _start_hashing(e: _Entry, hasher: Hasher, spec: Any, unreadable: list) -> None:
    """Hand a local entry's files to ``hasher``, stat-ing those the expansion did not."""
    items = e.items
    if -1 in items.size:  # not all stat-ed by a directory walk
        _stat_items(e, spec, unreadable)
    hasher.add(StatColumns(items.path, items.size, items.mtime_ns, items.inode))  # type: ignore[arg-type]


def _finish_hashing(entries: list[_Entry], hasher: Hasher, spec: Any, diagnostics: list, progress) -> None:
    """Wait for the digests of ``entries`` (each added to ``hasher`` in this order)."""
    on_progress = _throttled_progress(progress) if progress is not None else None
    for e, (digests, errors) in zip(entries, hasher.finish(on_progress), strict=True):
        e.digests = digests
        for i, exc in sorted(errors.items()):
            shown = e.items.display[i]
            if isinstance(exc, NotAnImageError):
                message = f"{shown}: {NOT_AN_IMAGE}"
            else:
                message = f"cannot read {shown}: {exc.strerror}"
            diagnostics.append(spec.diagnostic(e.spec_path, message))


def _stat_items(e: _Entry, spec: Any, diagnostics: list) -> None:
    """Fill in the stat of the items the expansion did not stat (single files, globs); one that
    cannot be stat-ed is reported and keeps size -1."""
    items = e.items
    for i, size in enumerate(items.size):
        if size >= 0:
            continue
        try:
            st = os.stat(items.path[i])  # type: ignore[arg-type]
        except OSError as exc:
            diagnostics.append(spec.diagnostic(e.spec_path, f"cannot read {items.display[i]}: {exc.strerror}"))
            continue
        items.size[i], items.mtime_ns[i], items.inode[i] = st.st_size, st.st_mtime_ns, st.st_ino


def _throttled_progress(progress):
    """``(done, total)`` -> a "hashing done/total files" line every few seconds."""
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == 0:
            progress(f"hashing {total:,} file{'' if total == 1 else 's'}")
        elif done < total and now - last[0] >= PROGRESS_EVERY_SECONDS:
            last[0] = now
            progress(f"hashing {done:,}/{total:,} files")

    return report


def _fetch_urls(entries: list[_Entry], cache_dir: Path, spec: Any, diagnostics: list) -> None:
    if not entries:
        return
    cache = UrlCache(cache_dir / "urls")
    urls = sorted({url for e in entries for url in e.items.url})  # type: ignore[misc]
    results: dict[str, tuple[str, int, bool] | str] = {}

    def fetch(url: str) -> None:
        try:
            results[url] = cache.resolve(url)
        except FetchError as exc:
            results[url] = str(exc)

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(fetch, urls))
    finally:
        cache.close()
    cache.save()
    for e in entries:
        e.digests = []
        for i, url in enumerate(e.items.url):
            got = results[url]  # type: ignore[index]
            if isinstance(got, str):
                diagnostics.append(spec.diagnostic(e.spec_path, f"cannot fetch {got}"))
                e.digests.append(None)
            elif not got[2]:
                diagnostics.append(spec.diagnostic(e.spec_path, f"{url}: {NOT_AN_IMAGE}"))
                e.digests.append(None)
            else:
                e.digests.append(got[0])
                e.items.size[i] = got[1]


def _assemble(
    entries: list[_Entry], spec: Any, diagnostics: list
) -> tuple[dict[str, DesiredSample], dict[str, tuple[str, int]]]:
    """Build the uid -> sample map, catching the same image declared in two classes.
    Also returns the sources that are not a sample's own (see Resolved.extra_sources).

    The common entry (files without a uid of their own, all resolved, none seen before)
    is built in one go, in C loops (map); the rest one sample at a time.
    """
    samples: dict[str, DesiredSample] = {}
    extra: dict[str, tuple[str, int]] = {}
    for e in entries:
        class_name, user_uid, caption, boxes = e.class_name, e.uid, e.caption, e.boxes
        items, digests = e.items, e.digests
        if user_uid is None and None not in digests:
            uids = list(map(derived_uid, digests))
            built = map(
                DesiredSample,
                uids,
                repeat(class_name),
                digests,
                items.size,
                items.display,
                items.path,
                items.url,
                repeat(caption),
                repeat(boxes),
                repeat(False),  # user_uid
            )
            fresh = dict(zip(uids, built, strict=True))
            if len(fresh) == len(uids) and fresh.keys().isdisjoint(samples):
                samples.update(fresh)
                continue
            # else a uid met twice (the same image, or a uid clash): sorted out one by one below
        for display, path, url, digest, size in zip(
            items.display, items.path, items.url, digests, items.size, strict=True
        ):
            if digest is None:
                continue  # already reported
            uid = user_uid or derived_uid(digest)
            prior = samples.get(uid)
            if prior is not None:
                if user_uid is None and not prior.user_uid:
                    if prior.class_name == class_name:
                        if display != prior.source:
                            extra[display] = (digest, size)
                        continue  # the same bytes reached twice in one class (overlapping globs): one sample
                    msg = (
                        f"{display} is the same image as {prior.source} in class "
                        f"'{prior.class_name}'; an image can belong to one class only"
                    )
                else:
                    msg = f"uid '{uid}' is already used by {prior.source} in class '{prior.class_name}'"
                diagnostics.append(spec.diagnostic(e.spec_path, msg))
                continue
            samples[uid] = DesiredSample(
                uid, class_name, digest, size, display, path, url, caption, boxes, user_uid is not None
            )
    return samples, extra


def source_text(entry: Any) -> tuple[str, bool]:
    """The source a spec entry names (a string, or a mapping's path or url), and whether it must
    be a single file (a sample with a uid of its own)."""
    if isinstance(entry, str):
        return entry, False
    return (entry.path if entry.path is not None else entry.url), entry.uid is not None


def source_diagnostics(spec: Any, targets: Iterable[str] = ()) -> list:
    """Every declared local source that does not expand (no hashing, no network): for validate."""
    diagnostics = []
    for _, class_name, entry, spec_path in declared_sources(spec, set(targets)):
        try:
            _expand_source(class_name, entry, spec.base_dir)
        except SourceError as exc:
            diagnostics.append(spec.diagnostic(spec_path, str(exc)))
    return diagnostics


def draft_source_diagnostics(draft: Any, targets: Iterable[str], reported: set[str]) -> list:
    """source_diagnostics for a spec that failed its checks (``draft``: specs.loader.Draft): each
    local source it declares plainly, a string or a mapping's path, that does not expand. A
    sample with a problem of its own (its path in ``reported``) is left to that message."""
    wanted = set(targets)
    out = []
    for path, entry in _draft_samples(draft.data):
        shown = format_path(path)
        own = any(r == shown or r.startswith((shown + ".", shown + "[")) for r in reported)
        if own or (wanted and path[1] not in wanted):
            continue
        text = entry if isinstance(entry, str) else entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(text, str) or not text.strip() or is_url(text):
            continue
        try:
            expand(text, draft.base_dir, single=isinstance(entry, dict) and "uid" in entry)
        except SourceError as exc:
            out.append(draft.diagnostic(path, str(exc)))
    return out


def _draft_samples(data: Any) -> Iterator[tuple[SpecPath, Any]]:
    """(spec path, entry) of each sample entry in a parsed spec, whatever else is wrong with it."""
    models = data.get("models") if isinstance(data, dict) else None
    for key, model in models.items() if isinstance(models, dict) else ():
        classes = model.get("classes") if isinstance(model, dict) else None
        for class_name, spec_class in classes.items() if isinstance(classes, dict) else ():
            samples = spec_class.get("samples") if isinstance(spec_class, dict) else None
            for index, entry in enumerate(samples) if isinstance(samples, list) else ():
                yield ("models", key, "classes", class_name, "samples", index), entry


def declared_sources(spec: Any, wanted: set[str]) -> Iterator[tuple[str, str, Any, SpecPath]]:
    """(model key, class name, sample entry, its spec path) of every declared sample source,
    in spec order, for the models in ``wanted`` (all when empty)."""
    for key, model in spec.models.items():
        if wanted and key not in wanted:
            continue
        for class_name, class_spec in model.classes.items():
            for index, entry in enumerate(class_spec.samples):
                yield key, class_name, entry, ("models", key, "classes", class_name, "samples", index)
