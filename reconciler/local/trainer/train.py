"""``train()``: samples in, weights bytes and metrics out. Pure computation, no I/O.

Classification when no sample has boxes, detection otherwise. Both paths: canonical
sample order, hash-based hold-out, features standardised on the training split (or
taken from the base model when fine-tuning), softmax by momentum gradient descent,
evaluation of the stored weights through the same Predictor that serves them.

One-class models (only with ``allow_one_class``, for a set of images with no classes,
such as Scenario's training sets): there is nothing to tell apart, so no softmax is fitted.
The model is the set's profile in feature space: the centre of its training images'
features and, for each part of the features (pixels, colours, colour histogram, shapes),
their spread around it; distances are taken with every part weighing the same. It keeps
the farthest training image's distance (the radius) and how much those distances vary (the
width), and scores how typical an image is of the set (Predictor.one_class_confidence):
images of the set's look score high, images of another look (other backgrounds, palettes,
textures) low. It is a coarse look-alike score, not a model of the set's content: with a
handful of images it is also strict with new images of the set, which ``recall`` shows.
Its metrics say what was measured: the share of held-out images of the set it accepts
(``recall``) and their mean confidence; there is no accuracy, which would need images from
outside the set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from reconciler.local.trainer.classifier import Fit, fit_softmax
from reconciler.local.trainer.config import TrainConfig, check_model_type, parse_config
from reconciler.local.trainer.dataset import BACKGROUND, Item, TrainResult, TrainSample, prepare, split_holdout
from reconciler.local.trainer.detection import (
    DetectionParams,
    background_patches,
    clip_box,
    iou_matrix,
    match,
    plan_params,
    positive_patches,
    scan_windows,
)
from reconciler.local.trainer.errors import InvalidImage, InvalidWeights, TrainingCanceled, TrainingError
from reconciler.local.trainer.features import (
    RESOLUTION,
    Standardizer,
    decode_image,
    feature_blocks,
    features,
    image_pixels,
    image_size,
)
from reconciler.local.trainer.predictor import DEFAULT_CONFIDENCE, DEFAULT_OVERLAP, ONE_CLASS_CONFIDENCE, Predictor
from reconciler.local.trainer.weights import ModelWeights, dump_weights, load_weights

NEG_BASE = 12  # background windows per training image, plus NEG_PER_BOX per box in it
NEG_PER_BOX = 6
MINE_CONFIDENCE = 0.3  # hard negatives: background windows scored as an object at least this much
MINED_BASE = 8  # at most this many hard negatives per training image, plus MINED_PER_BOX per box
MINED_PER_BOX = 4
MINE_IOU = 0.5
FEATURE_SHARE = 0.1  # share of the progress bar spent decoding and computing features
SPREAD_FLOOR = 1e-6  # one-class models: the spread of a set of (nearly) identical images
WIDTH_FLOOR = 0.1  # one-class models: the width is at least this share of the radius


class _Progress:
    """Wraps the caller's callback: maps phases onto 0..1 and turns False into TrainingCanceled."""

    def __init__(self, callback: Callable[[float], bool] | None) -> None:
        self.callback = callback

    def __call__(self, fraction: float) -> None:
        if self.callback is not None and self.callback(min(1.0, max(0.0, fraction))) is False:
            raise TrainingCanceled(f"training canceled at {fraction:.0%}")


def train(
    samples: list[TrainSample],
    *,
    model_type: str = "small",
    config: dict | None = None,
    base_weights: bytes | None = None,
    progress: Callable[[float], bool] | None = None,
    seed: int = 0,
    allow_one_class: bool = False,
) -> TrainResult:
    """Train a classifier, or a detector when any sample has boxes.

    The classes are the sorted labels of ``samples`` (box labels for a detector). Identical
    samples in any order give byte-identical weights. ``base_weights`` fine-tunes: the base's
    parameters of classes with the same name are the starting point, new classes start at
    zero, base classes absent from ``samples`` are dropped, and the base's feature
    standardisation is kept (so the model_type must match). ``progress(fraction)`` is called
    every few steps; returning False (not None) stops the run with TrainingCanceled.
    ``allow_one_class``: samples of a single class (no boxes) give a one-class model (see the
    module docstring) instead of a TrainingError.
    Raises TrainingError for bad config/model_type/base, too few classes, or no usable box;
    InvalidImage for a sample that is not an image.
    """
    started = time.perf_counter()
    model_type = check_model_type(model_type)
    cfg = parse_config(config, seed=seed)
    items = prepare(samples)
    base = _load_base(base_weights, model_type)
    report = _Progress(progress)
    report(0.0)
    if any(it.boxes for it in items):
        weights, metrics = _train_detector(items, model_type, cfg, base, report)
    else:
        weights, metrics = _train_classifier(items, model_type, cfg, base, report, allow_one_class)
    metrics["train_seconds"] = round(time.perf_counter() - started, 4)
    report(1.0)
    return TrainResult(weights=dump_weights(weights), metrics=metrics, detection=weights.detection is not None)


def _load_base(base_weights: bytes | None, model_type: str) -> ModelWeights | None:
    if base_weights is None:
        return None
    try:
        base = load_weights(base_weights)
    except InvalidWeights as exc:
        raise TrainingError(f"training.base: {exc}") from None
    if base.model_type != model_type:
        raise TrainingError(
            f"training.base: the base model is model_type {base.model_type!r}, not {model_type!r}; "
            "fine-tuning keeps the model type"
        )
    return base


def _init_from_base(base: ModelWeights | None, classes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Base parameters for the classes it knows (matched by name); new classes start at zero."""
    if base is None:
        return None
    w = np.zeros((base.w.shape[0], len(classes)))
    b = np.zeros(len(classes))
    index = {c: i for i, c in enumerate(base.classes)}
    for j, c in enumerate(classes):
        if c in index:
            w[:, j] = base.w[:, index[c]]
            b[j] = base.b[index[c]]
    return w, b


def _config_record(cfg: TrainConfig, n_classes: int) -> dict[str, Any]:
    """The effective settings, defaults filled in, as recorded in the metrics."""
    return {"steps": cfg.steps, "learning_rate": cfg.learning_rate, "l2": cfg.l2, "batch_size": cfg.batch_size,
            "holdout": cfg.holdout, "seed": cfg.seed, "num_classes": n_classes}


def _pixels(items: list[Item], size: int, report: _Progress, start: float, share: float) -> np.ndarray:
    out = np.zeros((len(items), size, size, 3), dtype=np.uint8)
    for i, it in enumerate(items):
        try:
            out[i] = image_pixels(it.data, size)
        except InvalidImage as exc:
            raise InvalidImage(f"sample {it.digest[:12]} of class {it.label!r}: {exc}") from None
        if i % 64 == 63:
            report(start + share * (i + 1) / len(items))
    return out


# ---------------------------------------------------------------- classification


def _train_classifier(
    items: list[Item], model_type: str, cfg: TrainConfig, base: ModelWeights | None, report: _Progress,
    allow_one_class: bool = False,
) -> tuple[ModelWeights, dict]:
    classes = sorted({it.label for it in items})
    if len(classes) == 1 and allow_one_class:
        return _train_one_class(items, model_type, cfg, base, report)
    if base is not None and base.one_class is not None:
        raise TrainingError("training.base: the base model is a one-class model; train this one without a base")
    if len(classes) < 2:
        raise TrainingError(f"training needs at least 2 classes with samples, got {len(classes)}: {classes}")
    if base is not None and base.detection is not None:
        raise TrainingError("training.base: the base model is a detector; this dataset has no boxes")
    train_items, hold_items = split_holdout(items, cfg.holdout, group=lambda it: it.label)
    size = RESOLUTION[model_type]
    pixels = _pixels(train_items + hold_items, size, report, 0.0, FEATURE_SHARE)
    train_px, hold_px = pixels[: len(train_items)], pixels[len(train_items) :]
    raw = features(train_px)
    scaler = Standardizer(base.mean, base.scale) if base is not None else Standardizer.fit(raw)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[it.label] for it in train_items])
    fit = fit_softmax(
        scaler.apply(raw), y, len(classes), cfg,
        init=_init_from_base(base, classes),
        progress=lambda f: report(FEATURE_SHARE + (1 - FEATURE_SHARE) * f),
    )
    weights = ModelWeights(model_type, tuple(classes), scaler.mean, scaler.scale,
                           fit.weights.astype(np.float32), fit.bias.astype(np.float32))
    held_out = bool(hold_items)
    eval_items, eval_px = (hold_items, hold_px) if held_out else (train_items, train_px)
    predicted = Predictor(weights).probabilities(eval_px).argmax(axis=1)
    truth = [it.label for it in eval_items]
    metrics = _classification_metrics(truth, [classes[p] for p in predicted])
    metrics.update(
        num_train=len(train_items), num_holdout=len(hold_items), holdout=held_out, steps=cfg.steps,
        final_loss=round(fit.final_loss, 6), model_type=model_type, detection=False, classes=classes,
        fine_tuned=base is not None, config=_config_record(cfg, len(classes)),
    )
    return weights, metrics


def _train_one_class(
    items: list[Item], model_type: str, cfg: TrainConfig, base: ModelWeights | None, report: _Progress
) -> tuple[ModelWeights, dict]:
    """The set's profile (centre, spread, radius, width); evaluated on held-out images of the set."""
    if base is not None:
        raise TrainingError("training.base: a one-class model (one class, no boxes) is trained without a base")
    if len(items) < 2:
        raise TrainingError(f"training a one-class model needs at least 2 different images, got {len(items)}")
    label = items[0].label
    # a held-out image needs two left to measure a spread with
    train_items, hold_items = split_holdout(items, cfg.holdout if len(items) >= 3 else 0.0, group=lambda it: label)
    size = RESOLUTION[model_type]
    pixels = _pixels(train_items + hold_items, size, report, 0.0, 0.9)
    train_px, hold_px = pixels[: len(train_items)], pixels[len(train_items) :]
    raw = features(train_px).astype(np.float64)
    centre = raw.mean(axis=0)
    blocks = feature_blocks(size)
    scale = np.empty(raw.shape[1])
    start = 0
    for n in blocks:  # each part's root-mean-square distance from the centre, so every part weighs the same
        part = np.linalg.norm(raw[:, start : start + n] - centre[start : start + n], axis=1)
        scale[start : start + n] = max(float(np.sqrt(np.mean(part * part))), SPREAD_FLOOR) * math.sqrt(len(blocks))
        start += n
    scale = scale.astype(np.float32)
    dist = np.linalg.norm((raw - centre) / scale, axis=1)
    radius = float(dist.max())
    width = max(float(np.std(dist)), WIDTH_FLOOR * radius, SPREAD_FLOOR)
    dim = raw.shape[1]
    weights = ModelWeights(model_type, (label,), centre.astype(np.float32), scale,
                           np.zeros((dim, 1), dtype=np.float32), np.zeros(1, dtype=np.float32), None,
                           (radius, width))
    metrics: dict[str, Any] = {
        "one_class": True,
        "num_train": len(train_items),
        "num_holdout": len(hold_items),
        "holdout": bool(hold_items),
        "steps": 0,  # fitted in closed form: no gradient step is taken
        "model_type": model_type,
        "detection": False,
        "classes": [label],
        "fine_tuned": False,
        "radius": round(radius, 6),
        "width": round(width, 6),
        "config": _config_record(cfg, 1),
    }
    if hold_items:
        confidence = Predictor(weights).one_class_confidence(hold_px)
        metrics["recall"] = round(float(np.mean(confidence >= ONE_CLASS_CONFIDENCE)), 6)
        metrics["mean_confidence"] = round(float(np.mean(confidence)), 6)
    report(0.95)
    return weights, metrics


def _classification_metrics(truth: list[str], predicted: list[str]) -> dict[str, Any]:
    confusion: dict[str, dict[str, int]] = {}
    for t, p in zip(truth, predicted, strict=True):
        row = confusion.setdefault(t, {})
        row[p] = row.get(p, 0) + 1
    confusion = {t: dict(sorted(row.items())) for t, row in sorted(confusion.items())}
    per_class = {t: round(row.get(t, 0) / sum(row.values()), 6) for t, row in confusion.items()}
    correct = sum(t == p for t, p in zip(truth, predicted, strict=True))
    return {"accuracy": round(correct / len(truth), 6) if truth else 0.0, "per_class": per_class,
            "confusion": confusion}


# ---------------------------------------------------------------- detection


def _image_boxes(it: Item, width: int, height: int) -> tuple[list[str], np.ndarray]:
    labels, boxes = [], []
    for label, x, y, w, h in it.boxes:
        clipped = clip_box((x, y, w, h), width, height)
        if clipped is not None:
            labels.append(label)
            boxes.append(clipped)
    return labels, np.array(boxes, dtype=np.float64).reshape(-1, 4)


def _train_detector(
    items: list[Item], model_type: str, cfg: TrainConfig, base: ModelWeights | None, report: _Progress
) -> tuple[ModelWeights, dict]:
    """Window classifier over object crops and background windows, with one round of hard-negative mining.

    The first half of ``steps`` trains on crops and sampled background; the trainer then scans its own
    training images and adds the windows it wrongly calls objects (IoU < 0.5 with every box, so they would
    count as false positives) as background;
    the remaining steps continue from there. ``steps`` stays the total number of gradient steps.
    """
    if base is not None and base.detection is None:
        raise TrainingError("training.base: the base model is a classifier; this dataset has boxes (detection)")
    size = RESOLUTION[model_type]
    train_items, hold_items = split_holdout(items, cfg.holdout, group=lambda it: "boxed" if it.boxes else "empty")
    shapes: list[tuple[float, float]] = []
    for it in train_items:
        width, height = image_size(it.data)
        for _, x, y, w, h in it.boxes:
            clipped = clip_box((x, y, w, h), width, height)
            if clipped is not None:
                shapes.append((math.sqrt(clipped[2] * clipped[3]) / min(width, height), clipped[2] / clipped[3]))
    if not shapes:
        raise TrainingError("training a detector needs boxes inside the images; no usable box was found")
    params = plan_params(shapes, size)
    classes = sorted({label for it in train_items for label, *_ in it.boxes}) + [BACKGROUND]
    index = {c: i for i, c in enumerate(classes)}
    background = index[BACKGROUND]
    rng = np.random.default_rng(cfg.seed)
    patches, labels = [], []
    share = 2 * FEATURE_SHARE
    for n, it in enumerate(train_items):
        img = _decode(it)
        box_labels, boxes = _image_boxes(it, *img.size)
        pos, owner = positive_patches(img, boxes, size, rng)
        patches.append(pos)
        labels.extend(index[box_labels[k]] for k in owner)
        neg = background_patches(img, boxes, params, size, NEG_BASE + NEG_PER_BOX * len(boxes), rng)
        patches.append(neg)
        labels.extend([background] * len(neg))
        report(share * (n + 1) / len(train_items))
    raw = features(np.concatenate(patches))
    y = np.array(labels)
    scaler = Standardizer(base.mean, base.scale) if base is not None else Standardizer.fit(raw)
    x = scaler.apply(raw)
    first = cfg.steps if cfg.steps < 2 else cfg.steps // 2
    split = share + (1 - share) * first / cfg.steps
    fit = fit_softmax(
        x, y, len(classes), replace(cfg, steps=first),
        init=_init_from_base(base, classes), sample_weight=_balance(y, len(classes)),
        progress=lambda f: report(share + (split - share) * f),
    )
    mined = 0
    if cfg.steps > first:
        weights = _detector_weights(model_type, classes, scaler, fit, params)
        hard = _hard_negatives(weights, train_items, lambda f: report(split + 0.02 * f))
        mined = len(hard)
        if mined:
            x = np.concatenate([x, scaler.apply(features(hard))])
            y = np.concatenate([y, np.full(mined, background)])
        fit = fit_softmax(
            x, y, len(classes), replace(cfg, steps=cfg.steps - first, seed=cfg.seed + 1),
            init=(fit.weights, fit.bias), sample_weight=_balance(y, len(classes)),
            progress=lambda f: report(split + 0.02 + (0.95 - split) * f),
        )
    weights = _detector_weights(model_type, classes, scaler, fit, params)
    held_out = any(it.boxes for it in hold_items)
    metrics = _evaluate_detector(weights, hold_items if held_out else train_items, report)
    metrics.update(
        num_train=len(train_items), num_holdout=len(hold_items), holdout=held_out, steps=cfg.steps,
        final_loss=round(fit.final_loss, 6), model_type=model_type, detection=True, classes=classes[:-1],
        fine_tuned=base is not None, config=_config_record(cfg, len(classes) - 1),
        num_train_boxes=int(sum(len(it.boxes) for it in train_items)),
        num_windows=int(len(y)), num_hard_negatives=mined, detection_params=_params_json(params),
    )
    return weights, metrics


def _detector_weights(model_type: str, classes: list[str], scaler: Standardizer, fit: Fit,
                      params: DetectionParams) -> ModelWeights:
    return ModelWeights(model_type, tuple(classes), scaler.mean, scaler.scale,
                        fit.weights.astype(np.float32), fit.bias.astype(np.float32), params)


def _hard_negatives(weights: ModelWeights, items: list[Item], report: Callable[[float], None]) -> np.ndarray:
    """Windows of the training images that the current model calls an object but that overlap none."""
    assert weights.detection is not None
    predictor = Predictor(weights)
    size = weights.size
    found = []
    for n, it in enumerate(items):
        img = _decode(it)
        _, boxes = _image_boxes(it, *img.size)
        windows, patches = scan_windows(img, weights.detection, size)
        probs = predictor.window_probabilities(patches)
        best = probs.argmax(axis=1)
        conf = probs[np.arange(len(best)), best]
        overlap = iou_matrix(windows, boxes).max(axis=1) if len(boxes) else np.zeros(len(windows))
        is_object = best != len(weights.classes) - 1
        wrong = np.flatnonzero(is_object & (conf >= MINE_CONFIDENCE) & (overlap < MINE_IOU))
        limit = MINED_BASE + MINED_PER_BOX * len(boxes)
        if len(wrong) > limit:
            wrong = wrong[np.lexsort((wrong, -conf[wrong]))[:limit]]
        found.append(patches[np.sort(wrong)])
        report((n + 1) / len(items))
    return np.concatenate(found) if found else np.zeros((0, size, size, 3), dtype=np.uint8)


def _balance(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Background weighs as much as all objects together; object classes weigh by their counts."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    background = n_classes - 1
    objects = counts[:background].sum()
    w = np.ones(len(y))
    if counts[background] and objects:
        w[y == background] = objects / counts[background]
    return w


def _params_json(params: DetectionParams) -> dict[str, Any]:
    return {"sizes": list(params.sizes), "aspects": list(params.aspects), "stride": params.stride}


def _decode(it: Item) -> Image.Image:
    try:
        return decode_image(it.data)
    except InvalidImage as exc:
        raise InvalidImage(f"sample {it.digest[:12]} of class {it.label!r}: {exc}") from None


def _evaluate_detector(weights: ModelWeights, items: list[Item], report: _Progress) -> dict[str, Any]:
    """Box-level scores at IoU 0.5 with the default thresholds.

    accuracy = correct / (true boxes + predicted boxes - correct): it falls with misses,
    wrong labels and false positives alike. per_class is recall per true label.
    """
    predictor = Predictor(weights)
    truth_labels: list[str] = []
    confusion: dict[str, dict[str, int]] = {}
    n_pred = correct = 0
    for n, it in enumerate(items):
        report(0.97 + 0.03 * n / len(items))
        img = _decode(it)
        box_labels, boxes = _image_boxes(it, *img.size)
        truth = [{"label": lb, "x": b[0], "y": b[1], "w": b[2], "h": b[3]} for lb, b in zip(box_labels, boxes,
                                                                                           strict=True)]
        found = predictor.detect_image(img, DEFAULT_CONFIDENCE, DEFAULT_OVERLAP)["boxes"]
        pairs, extra = match(truth, found)
        n_pred += len(found)
        for t, p in pairs:
            truth_labels.append(t)
            row = confusion.setdefault(t, {})
            key = p if p is not None else "__missed__"
            row[key] = row.get(key, 0) + 1
            correct += t == p
        for p in extra:
            row = confusion.setdefault(BACKGROUND, {})
            row[p] = row.get(p, 0) + 1
    confusion = {t: dict(sorted(row.items())) for t, row in sorted(confusion.items())}
    per_class = {t: round(row.get(t, 0) / sum(row.values()), 6) for t, row in confusion.items() if t != BACKGROUND}
    n_true = len(truth_labels)
    denominator = n_true + n_pred - correct
    return {
        "accuracy": round(correct / denominator, 6) if denominator else 1.0,
        "precision": round(correct / n_pred, 6) if n_pred else 0.0,
        "recall": round(correct / n_true, 6) if n_true else 0.0,
        "per_class": per_class,
        "confusion": confusion,
        "num_boxes": n_true,
        "false_positives": sum(confusion.get(BACKGROUND, {}).values()),
    }
