"""The pure data the core passes around: desired state, remote snapshot, versions.

Everything here is plain, immutable-by-convention data with no I/O, so that diff
and plan stay pure functions that tests can drive with hand-made values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DIGEST_PREFIX = "sha256:"
DERIVED_UID_PREFIX = "ms-"


def sha256_digest(data: bytes) -> str:
    """The content digest modelsync uses everywhere: ``sha256:<hex>``."""
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def derived_uid(digest: str) -> str:
    """The uid of a sample the user gave no uid: a prefix of its content digest.

    96 bits of the digest keep collisions out of reach for any real dataset while
    staying short enough for vendors that cap uid length.
    """
    return DERIVED_UID_PREFIX + digest.removeprefix(DIGEST_PREFIX)[:24]


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the bytes digests are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dataset_digest(pairs: list[tuple[str, str]] | Any) -> str:
    """sha256 of the sorted ``class<TAB>digest`` lines: the dataset's version (DESIGN.md)."""
    lines = sorted(f"{cls}\t{digest}" for cls, digest in pairs)
    return sha256_digest("\n".join(lines).encode())


def config_digest(model_type: str, base: str | None, config: dict[str, Any]) -> str:
    """Digest of everything that shapes a training run besides the data."""
    return sha256_digest(canonical_json({"model_type": model_type, "base": base, "config": config}).encode())


@dataclass(frozen=True, slots=True)
class Box:
    """An object's bounding box in pixels (Autogon's ``bbx``: x, y, w, h)."""

    label: str
    x: float
    y: float
    w: float
    h: float
    confidence: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "x": self.x, "y": self.y, "w": self.w, "h": self.h}
        if self.confidence is not None:
            out["confidence"] = self.confidence
        return out


# --------------------------------------------------------------------------- desired


# DesiredSample and RemoteSample are made 100k at a time by every plan at scale: they are
# not frozen, because a frozen dataclass's __init__ sets each field through
# object.__setattr__ (3x slower: 0.33 s instead of 0.10 s per 100k RemoteSamples,
# measured). Nothing hashes them or keeps them in sets; treat them as immutable anyway.


@dataclass(slots=True)
class DesiredSample:
    """One declared sample after resolution: its identity, content and where to read it."""

    uid: str
    class_name: str
    digest: str
    size: int
    source: str  # as shown to people: a path relative to the spec, or the URL
    path: str | None = None  # absolute local path, for file sources
    url: str | None = None  # http(s) URL, for URL sources
    caption: str | None = None
    boxes: tuple[Box, ...] = ()
    user_uid: bool = False  # True when the uid came from the spec, not from the digest


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    auto: bool = True
    model_type: str = "small"
    base: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DesiredModel:
    """A model as the spec wants it, with every sample resolved and hashed."""

    key: str
    provider: str
    provider_type: str
    title: str
    type: str
    purpose: str
    tags: tuple[str, ...]
    classes: tuple[str, ...]
    samples: dict[str, DesiredSample]  # uid -> sample
    training: TrainingSettings
    prevent_destroy: bool = False
    prune: str = "managed"  # managed | all | none

    @property
    def dataset_digest(self) -> str:
        return dataset_digest((s.class_name, s.digest) for s in self.samples.values())

    @property
    def config_digest(self) -> str:
        t = self.training
        return config_digest(t.model_type, t.base, t.config)


# --------------------------------------------------------------------------- remote


@dataclass(slots=True)  # not frozen: see DesiredSample
class RemoteSample:
    """A sample as the remote reports it. ``uid`` is None when the vendor keeps no uid
    and the state does not know the sample (then it is foreign to modelsync)."""

    remote_id: str
    uid: str | None
    class_name: str
    size: int | None = None
    digest: str | None = None
    caption: str | None = None
    boxes: tuple[Box, ...] = ()
    url: str | None = None


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One trained version of a model, and exactly what produced it."""

    version: str
    dataset_digest: str | None = None
    config_digest: str | None = None
    trained_at: str | None = None  # ISO 8601, UTC
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "trained"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "dataset_digest": self.dataset_digest,
            "config_digest": self.config_digest,
            "trained_at": self.trained_at,
            "metrics": self.metrics,
        }


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """An entry of a provider's model list: enough to match by title."""

    remote_id: str
    title: str
    num_samples: int | None = None


@dataclass(slots=True)
class RemoteModel:
    """A model as refreshed from its provider."""

    remote_id: str
    title: str
    type: str | None = None
    purpose: str | None = None
    tags: tuple[str, ...] = ()
    classes: dict[str, str] = field(default_factory=dict)  # class name -> remote class id ("" if none)
    samples: list[RemoteSample] = field(default_factory=list)
    versions: list[VersionInfo] = field(default_factory=list)  # newest first
    training_status: str | None = None  # queued | training | trained | failed | canceled | None
    config: dict[str, Any] | None = None

    def fingerprint(self) -> str:
        """A digest of everything the plan depends on, to detect a stale saved plan."""
        body = {
            "id": self.remote_id,
            "title": self.title,
            "tags": sorted(self.tags),
            "classes": sorted(self.classes),
            "samples": sorted((s.remote_id, s.uid or "", s.class_name, s.digest or "") for s in self.samples),
            "versions": [v.version for v in self.versions],
        }
        return sha256_digest(canonical_json(body).encode())


# --------------------------------------------------------------------------- provider I/O


@dataclass(frozen=True, slots=True)
class UploadItem:
    """What a provider needs to upload one sample. ``read`` loads the bytes lazily so
    that a plan over 100k samples never holds them all in memory."""

    uid: str
    class_name: str
    digest: str
    size: int
    filename: str
    read: Callable[[], bytes]
    url: str | None = None
    caption: str | None = None
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True, slots=True)
class TrainRequest:
    model_type: str
    base: str | None
    config: dict[str, Any]
    dataset_digest: str
    config_digest: str
    save_name: str | None = None


@dataclass(frozen=True, slots=True)
class TrainingStatus:
    """A training job's state: queued | training | trained | failed | canceled."""

    state: str
    progress: float | None = None  # 0..1 when known
    version: VersionInfo | None = None  # set once trained
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in ("trained", "failed", "canceled")


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image to run a model on: bytes, or a URL the provider fetches."""

    name: str
    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    input: str
    label: str | None
    confidence: float
    boxes: tuple[Box, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)

    def to_json(self, detection: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"input": self.input, "label": self.label, "confidence": self.confidence}
        if detection or self.boxes:
            out["boxes"] = [b.to_json() for b in self.boxes]
        return out


@dataclass(frozen=True, slots=True)
class InferenceStatus:
    """An asynchronous batch inference job (AnnoLab's states: Queued, Running, Finished, Errored)."""

    job_id: str
    state: str
    done: int = 0
    total: int = 0
    results: tuple[Prediction, ...] = ()
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("Finished", "Errored")
