"""Inference from weights bytes: the same code path the trainer uses to score its hold-out."""

from __future__ import annotations

import numpy as np
from PIL import Image

from reconciler.local.trainer.classifier import softmax
from reconciler.local.trainer.detection import detections, scan_windows
from reconciler.local.trainer.errors import InvalidImage
from reconciler.local.trainer.features import decode_image, features, image_pixels
from reconciler.local.trainer.weights import ModelWeights, load_weights

DEFAULT_CONFIDENCE = 0.5
DEFAULT_OVERLAP = 0.3
ONE_CLASS_CONFIDENCE = 0.5  # a one-class model names its class from this confidence up, by default
CHUNK = 2048  # windows scored per batch: bounds memory on large images


def _threshold(name: str, value: float | None, default: float | None) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number between 0 and 1, got {value!r}")
    return float(value)


class Predictor:
    """A loaded model. Cheap to keep per version; thread-safe (holds only read-only arrays)."""

    def __init__(self, weights: ModelWeights) -> None:
        self.weights = weights
        self.classes: list[str] = weights.object_classes
        self.detection: bool = weights.detection is not None
        self.model_type: str = weights.model_type
        self._w = weights.w.astype(np.float32)
        self._b = weights.b.astype(np.float32)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, K) class probabilities over the classifier's outputs."""
        x = (features(pixels) - self.weights.mean) / self.weights.scale
        return softmax((x @ self._w + self._b).astype(np.float64))

    def one_class_confidence(self, pixels: np.ndarray) -> np.ndarray:
        """One-class models: (N, S, S, 3) uint8 -> (N,) how typical each image is of the set.

        d is the distance of the image's features from the set's centre, scaled by the set's
        spread. 1.0 up to the radius (the farthest training image), then exp(-(d - radius) / width):
        0.5 at ln 2 widths beyond it, the width being how much the training images' own
        distances vary.
        """
        assert self.weights.one_class is not None
        radius, width = self.weights.one_class
        x = (features(pixels) - self.weights.mean) / self.weights.scale
        d = np.linalg.norm(x.astype(np.float64), axis=1)
        return np.exp(-np.maximum(d - radius, 0.0) / width)

    def window_probabilities(self, patches: np.ndarray) -> np.ndarray:
        """Like probabilities, in chunks of CHUNK windows so memory stays bounded."""
        probs = np.zeros((len(patches), len(self.weights.classes)))
        for start in range(0, len(patches), CHUNK):
            probs[start : start + CHUNK] = self.probabilities(patches[start : start + CHUNK])
        return probs

    def predict(
        self,
        images: list[bytes],
        *,
        confidence_thresh: float | None = None,
        overlap_thresh: float | None = None,
    ) -> list[dict]:
        """One dict per image: label, confidence, scores per class, boxes (empty for classifiers).

        Classifiers: ``confidence_thresh`` (when given) turns a top class below it into label None.
        One-class models: confidence is ``one_class_confidence``; the label is the class from
        ``confidence_thresh`` (default ONE_CLASS_CONFIDENCE) up, else None.
        Detectors: boxes scoring below ``confidence_thresh`` (default 0.5) are dropped and boxes
        overlapping a better one by IoU above ``overlap_thresh`` (default 0.3) are suppressed;
        the image's label/confidence are those of its best box (None/0.0 without boxes).
        Raises InvalidImage (naming the index) for bytes that are not an image.
        """
        if self.detection:
            conf = _threshold("confidence_thresh", confidence_thresh, DEFAULT_CONFIDENCE)
            overlap = _threshold("overlap_thresh", overlap_thresh, DEFAULT_OVERLAP)
            return [self._detect(_decode(data, i), conf, overlap) for i, data in enumerate(images)]
        conf = _threshold("confidence_thresh", confidence_thresh, None)
        _threshold("overlap_thresh", overlap_thresh, None)
        if not images:
            return []
        size = self.weights.size
        pixels = np.stack([_pixels(data, i, size) for i, data in enumerate(images)])
        if self.weights.one_class is not None:
            (name,) = self.classes
            cut = ONE_CLASS_CONFIDENCE if conf is None else conf
            return [
                {"label": name if c >= cut else None, "confidence": round(float(c), 6),
                 "scores": {name: round(float(c), 6)}, "boxes": []}
                for c in self.one_class_confidence(pixels)
            ]
        probs = self.probabilities(pixels)
        out = []
        for row in probs:
            best = int(row.argmax())
            confidence = float(row[best])
            label = self.classes[best] if conf is None or confidence >= conf else None
            out.append({
                "label": label,
                "confidence": round(confidence, 6),
                "scores": {c: round(float(p), 6) for c, p in zip(self.classes, row, strict=True)},
                "boxes": [],
            })
        return out

    def detect_image(self, img: Image.Image, confidence_thresh: float, overlap_thresh: float) -> dict:
        """Detection on a decoded RGB image (the trainer's evaluation calls this directly)."""
        return self._detect(img, confidence_thresh, overlap_thresh)

    def _detect(self, img: Image.Image, conf: float, overlap: float) -> dict:
        params = self.weights.detection
        assert params is not None
        windows, patches = scan_windows(img, params, self.weights.size)
        k = len(self.weights.classes)
        probs = self.window_probabilities(patches)
        boxes = detections(windows, probs, self.weights.classes, confidence_thresh=conf, overlap_thresh=overlap)
        scores = probs[:, :-1].max(axis=0) if len(windows) else np.zeros(k - 1)
        best = boxes[0] if boxes else None
        return {
            "label": best["label"] if best else None,
            "confidence": best["confidence"] if best else 0.0,
            "scores": {c: round(float(p), 6) for c, p in zip(self.classes, scores, strict=True)},
            "boxes": boxes,
        }


def _decode(data: bytes, index: int) -> Image.Image:
    try:
        return decode_image(data)
    except InvalidImage as exc:
        raise InvalidImage(f"images[{index}]: {exc}") from None


def _pixels(data: bytes, index: int, size: int) -> np.ndarray:
    try:
        return image_pixels(data, size)
    except InvalidImage as exc:
        raise InvalidImage(f"images[{index}]: {exc}") from None


def load_predictor(weights: bytes) -> Predictor:
    """Parse weights bytes (InvalidWeights if they are not ours) into a Predictor."""
    return Predictor(load_weights(weights))
