"""Training samples: validation, a canonical order, and the deterministic hold-out split.

Samples are sorted by (label, sha256 of the bytes) and exact duplicates (same label, same
bytes) are kept once, so the caller's order never changes the weights. The hold-out is
chosen by content hash, not by position or RNG: adding one image to a class moves at
most one other image between the splits, and re-training the same data holds out the
same images.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.local.trainer.errors import TrainingError

BACKGROUND = "__background__"


@dataclass(frozen=True)
class TrainSample:
    """One labelled image; ``boxes`` are {label, x, y, w, h} dicts in pixels (detection)."""

    label: str
    data: bytes
    boxes: tuple[dict, ...] = ()


@dataclass(frozen=True)
class TrainResult:
    """Serialised weights, the metrics recorded with the version, and whether it is a detector."""

    weights: bytes
    metrics: dict
    detection: bool


@dataclass(frozen=True)
class Item:
    """A validated sample: digest computed, boxes as sorted (label, x, y, w, h) tuples."""

    label: str
    data: bytes = field(repr=False)
    digest: str
    boxes: tuple[tuple[str, float, float, float, float], ...] = ()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _box(raw: Any, label: str, where: str) -> tuple[str, float, float, float, float]:
    if not isinstance(raw, dict):
        raise TrainingError(f"{where}: expected a box mapping {{label, x, y, w, h}}, got {raw!r}")
    for key in ("x", "y", "w", "h"):
        if not _number(raw.get(key)):
            raise TrainingError(f"{where}.{key}: expected a number, got {raw.get(key)!r}")
    if raw["w"] <= 0 or raw["h"] <= 0:
        raise TrainingError(f"{where}: width and height must be positive, got w={raw['w']!r} h={raw['h']!r}")
    box_label = raw.get("label") or label
    if not isinstance(box_label, str):
        raise TrainingError(f"{where}.label: expected a string, got {box_label!r}")
    if box_label == BACKGROUND:
        raise TrainingError(f"{where}.label: {BACKGROUND!r} is reserved")
    return (box_label, float(raw["x"]), float(raw["y"]), float(raw["w"]), float(raw["h"]))


def prepare(samples: Sequence[Any]) -> list[Item]:
    """Validate, hash, sort by (label, digest) and drop exact duplicates."""
    if not isinstance(samples, list | tuple):
        raise TrainingError(f"samples: expected a list of TrainSample, got {type(samples).__name__}")
    items: dict[tuple[str, str], Item] = {}
    for i, s in enumerate(samples):
        label, data, boxes = getattr(s, "label", None), getattr(s, "data", None), getattr(s, "boxes", ())
        if not isinstance(label, str) or not label:
            raise TrainingError(f"samples[{i}].label: expected a non-empty string, got {label!r}")
        if label == BACKGROUND:
            raise TrainingError(f"samples[{i}].label: {BACKGROUND!r} is reserved")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TrainingError(f"samples[{i}].data: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        parsed = tuple(sorted(_box(b, label, f"samples[{i}].boxes[{j}]") for j, b in enumerate(boxes or ())))
        digest = hashlib.sha256(data).hexdigest()
        key = (label, digest)
        if key in items and items[key].boxes != parsed:
            parsed = tuple(sorted(set(parsed) | set(items[key].boxes)))
        items[key] = Item(label, data, digest, parsed)
    return [items[k] for k in sorted(items)]


def split_holdout(items: list[Item], fraction: float, group: Callable[[Item], str]) -> tuple[list[Item], list[Item]]:
    """Per group, hold out round(fraction * n) items with the smallest digests (>= 1 when n >= 2, < n)."""
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(group(it), []).append(it)
    held: set[tuple[str, str]] = set()
    for members in groups.values():
        n = len(members)
        if fraction <= 0 or n < 2:
            continue
        k = min(n - 1, max(1, round(fraction * n)))
        for it in sorted(members, key=lambda it: it.digest)[:k]:
            held.add((it.label, it.digest))
    train = [it for it in items if (it.label, it.digest) not in held]
    hold = [it for it in items if (it.label, it.digest) in held]
    return train, hold
