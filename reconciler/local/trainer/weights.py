"""Weights as bytes: an ``np.savez`` archive, no pickle, deterministic for equal content.

The archive holds everything prediction needs, so a version's weights blob is
self-contained: format and feature versions, model type, class names, the feature
standardisation, the softmax parameters and, for detectors, the scanning geometry.
A one-class model (see train.py) adds ``one_class`` (its radius and width); other models'
archives are unchanged.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from reconciler.local.trainer.dataset import BACKGROUND
from reconciler.local.trainer.detection import DetectionParams
from reconciler.local.trainer.errors import InvalidWeights
from reconciler.local.trainer.features import FEATURE_VERSION, RESOLUTION, feature_dim

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelWeights:
    """A trained model. For detectors ``classes`` ends with BACKGROUND.

    ``one_class`` is set for a one-class model only: ``mean``/``scale`` are then the set's
    centre and spread (see train.py), and ``one_class`` is (radius, width): the farthest
    training image's distance from the centre and the standard deviation of those distances.
    """

    model_type: str
    classes: tuple[str, ...]
    mean: np.ndarray  # (D,) float32
    scale: np.ndarray  # (D,) float32
    w: np.ndarray  # (D, K) float32
    b: np.ndarray  # (K,) float32
    detection: DetectionParams | None = None
    one_class: tuple[float, float] | None = None

    @property
    def size(self) -> int:
        return RESOLUTION[self.model_type]

    @property
    def object_classes(self) -> list[str]:
        """The labels a user sees (the background class of a detector left out)."""
        return [c for c in self.classes if c != BACKGROUND] if self.detection else list(self.classes)


def dump_weights(m: ModelWeights) -> bytes:
    """Serialise with np.savez into memory; equal weights give byte-identical output."""
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "feature_version": np.array(FEATURE_VERSION, dtype=np.int64),
        "model_type": np.array(m.model_type, dtype=np.str_),
        "classes": np.array(list(m.classes), dtype=np.str_),
        "mean": np.asarray(m.mean, dtype=np.float32),
        "scale": np.asarray(m.scale, dtype=np.float32),
        "w": np.asarray(m.w, dtype=np.float32),
        "b": np.asarray(m.b, dtype=np.float32),
        "detection": np.array(m.detection is not None),
    }
    if m.detection is not None:
        arrays["det_sizes"] = np.asarray(m.detection.sizes, dtype=np.float64)
        arrays["det_aspects"] = np.asarray(m.detection.aspects, dtype=np.float64)
        arrays["det_stride"] = np.array(m.detection.stride, dtype=np.int64)
    if m.one_class is not None:
        arrays["one_class"] = np.asarray(m.one_class, dtype=np.float64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_weights(data: bytes) -> ModelWeights:
    """Parse and check weights bytes; anything malformed raises InvalidWeights."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, TypeError) as exc:
        raise InvalidWeights(f"weights: not a modelsync weights archive ({exc})") from None
    required = {"format_version", "feature_version", "model_type", "classes", "mean", "scale", "w", "b", "detection"}
    missing = sorted(required - arrays.keys())
    if missing:
        raise InvalidWeights(f"weights: missing arrays {missing}")
    version = int(arrays["format_version"])
    if version != FORMAT_VERSION:
        raise InvalidWeights(f"weights: format version {version} is not supported (expected {FORMAT_VERSION})")
    if int(arrays["feature_version"]) != FEATURE_VERSION:
        raise InvalidWeights(f"weights: feature version {int(arrays['feature_version'])} is not supported")
    model_type = str(arrays["model_type"])
    if model_type not in RESOLUTION:
        raise InvalidWeights(f"weights: unknown model_type {model_type!r}")
    classes = tuple(str(c) for c in arrays["classes"])
    d, k = feature_dim(RESOLUTION[model_type]), len(classes)
    w, b = arrays["w"], arrays["b"]
    if w.shape != (d, k) or b.shape != (k,) or arrays["mean"].shape != (d,) or arrays["scale"].shape != (d,):
        raise InvalidWeights(f"weights: array shapes do not match {k} classes and {d} features")
    detection = None
    if bool(arrays["detection"]):
        try:
            detection = DetectionParams(
                sizes=tuple(float(s) for s in arrays["det_sizes"]),
                aspects=tuple(float(a) for a in arrays["det_aspects"]),
                stride=int(arrays["det_stride"]),
            )
        except KeyError as exc:
            raise InvalidWeights(f"weights: detector without {exc.args[0]}") from None
    one_class = None
    if "one_class" in arrays:
        values = arrays["one_class"]
        if detection is not None or k != 1 or values.shape != (2,) or not (values[0] >= 0 and values[1] > 0):
            raise InvalidWeights("weights: a one-class model needs one class, no detector, a radius and a width")
        one_class = (float(values[0]), float(values[1]))
    return ModelWeights(model_type, classes, arrays["mean"], arrays["scale"], w, b, detection, one_class)
