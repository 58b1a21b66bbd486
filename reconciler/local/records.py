"""What the embedded service hands out: immutable snapshots of its rows.

Timestamps are float unix seconds. Records never reference the database: they stay
valid after the service is closed, and callers may keep or share them across threads.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import starmap
from typing import Any


@dataclass(frozen=True, slots=True)
class SampleRecord:
    id: int
    model_id: int
    class_id: int
    class_title: str
    uid: str | None
    digest: str
    size: int
    media_type: str
    width: int
    height: int
    caption: str | None
    boxes: tuple[dict, ...]
    created_at: float
    source_url: str | None


@dataclass(frozen=True, slots=True)
class ClassRecord:
    id: int
    model_id: int
    title: str
    created_at: float
    total_bytes: int
    samples: tuple[SampleRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelRecord:
    id: int
    owner: str
    title: str
    type: str
    purpose: str
    tags: tuple[str, ...]
    created_at: float
    num_classes: int
    num_samples: int
    total_bytes: int
    trained: bool
    latest_version: str | None
    trained_at: float | None
    training_state: str | None  # state of the latest training job, None if never started
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelDetail:
    model: ModelRecord
    classes: tuple[ClassRecord, ...]


@dataclass(frozen=True, slots=True)
class VersionRecord:
    version: str
    model_id: int
    status: str
    dataset_digest: str
    config_digest: str | None
    config: dict[str, Any]
    model_type: str
    base: str | None
    save_name: str | None
    metrics: dict[str, Any]
    started_at: float
    trained_at: float | None
    error: str | None
    num_samples: int


@dataclass(frozen=True, slots=True)
class TrainingJob:
    id: int
    model_id: int
    state: str  # queued | training | trained | failed | canceled
    progress: float
    version: str | None
    error: str | None

    @property
    def done(self) -> bool:
        return self.state in ("trained", "failed", "canceled")


@dataclass(frozen=True, slots=True)
class InferenceJob:
    id: int
    owner: str
    model_id: int
    version: str
    state: str  # Queued | Running | Finished | Errored (AnnoLab's names)
    total: int
    done: int
    results: tuple[dict, ...]
    error: str | None
    output_layer: str
    project: str | None

    @property
    def finished(self) -> bool:
        return self.state in ("Finished", "Errored")


@dataclass(frozen=True, slots=True)
class SourceRecord:
    id: int
    owner: str
    project: str
    name: str
    digest: str
    size: int
    created_at: float


# --------------------------------------------------------------------------- fast building


@dataclass(slots=True)
class _SampleRecordBuilder:
    """A mutable twin of SampleRecord with the identical slot layout.

    A frozen dataclass sets each field through ``object.__setattr__``, which makes
    building 100k records cost about three times as much as a plain slots class. We
    build the twin at full speed and then retag each object as a SampleRecord (legal
    because the layouts are identical; checked below at import).
    """

    id: int
    model_id: int
    class_id: int
    class_title: str
    uid: str | None
    digest: str
    size: int
    media_type: str
    width: int
    height: int
    caption: str | None
    boxes: tuple[dict, ...]
    created_at: float
    source_url: str | None


def sample_records(rows: Iterable[tuple], titles: Mapping[int, str] | None = None) -> list[SampleRecord]:
    """SampleRecords from rows in field order, ``boxes`` as stored (NULL or a JSON list).

    With ``titles`` (class id -> title) the rows' class_title column is ignored and
    filled from it, which spares the query a join and a string per row.
    """
    out: list[Any] = list(starmap(_SampleRecordBuilder, rows))
    loads = json.loads
    for rec in out:
        boxes = rec.boxes
        rec.boxes = () if boxes is None else tuple(loads(boxes))
        if titles is not None:
            rec.class_title = titles[rec.class_id]
        rec.__class__ = SampleRecord
    return out


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects at once.

    Every 700 allocations of tracked objects trigger a collection, and with a large
    heap the older generations make building 100k records roughly twice as slow.
    None of these objects form cycles, so nothing is lost by collecting later.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def group_by_class(records: list[SampleRecord]) -> dict[int, list[SampleRecord]]:
    """class id -> its records, keeping their order."""
    groups: dict[int, list[SampleRecord]] = {}
    for rec in records:
        group = groups.get(rec.class_id)
        if group is None:
            groups[rec.class_id] = [rec]
        else:
            group.append(rec)
    return groups


def _check_twin() -> None:
    names = [f for f in SampleRecord.__slots__]
    assert names == list(_SampleRecordBuilder.__slots__), "SampleRecord and its builder must share fields"
    row = (*range(11), None, 12, 13)
    probe = sample_records([row])[0]
    assert type(probe) is SampleRecord and probe == SampleRecord(*range(11), (), 12, 13)


_check_twin()
