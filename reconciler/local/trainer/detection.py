"""Sliding-window object detection on top of the softmax classifier.

Training: every box is cropped (plus a few jittered crops) as a positive example of its
label; windows of the scanning grid that overlap no box (IoU < 0.1) are sampled as the
``__background__`` class, plus a few that cut through an object (IoU < 0.3); the trainer
then mines its own false positives once (see train.py). Prediction: the image is resized
once per window shape so a window becomes S - 2c pixels, every S x S patch on a stride
grid (the window plus a c-pixel context ring) is cut out with one ``sliding_window_view``
(no Python loop over windows), all patches are scored in batches, background and
low-confidence windows are dropped, and greedy non-maximum suppression (class-agnostic:
one object, one box) keeps the best of overlapping windows. Each kept box is then refined
to the confidence-weighted mean of the same-label windows around it (IoU >= 0.5), which
removes most of the stride quantisation.

Window shapes come from the training boxes: sizes relative to the image's shorter side
on a geometric ladder (ratio 1.2) spanning the boxes seen, and up to three aspect ratios.
Relative sizes make a detector trained on 96 px scenes work on the same scenes at 960 px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

SIZE_RATIO = 1.2
MAX_SIZES = 10
MAX_WINDOWS = 20_000  # per image; the stride grows beyond it so memory stays bounded
BACKGROUND_IOU = 0.1
NEAR_MISS_IOU = 0.3  # windows cutting through an object (0.1 <= IoU < 0.3) are background too
NEAR_MISSES_PER_BOX = 4
JITTERS = 4
MATCH_IOU = 0.5
MAX_BOXES = 100
REFINE_IOU = 0.5
CONTAINED = 0.8


@dataclass(frozen=True)
class DetectionParams:
    """Scanning geometry, stored with a detector's weights."""

    sizes: tuple[float, ...]  # window side sqrt(w*h) as a fraction of the image's shorter side
    aspects: tuple[float, ...]  # window w / h
    stride: int  # in pixels of the resized image, where a window is S - 2 * context_pixels(S) wide


def plan_params(boxes: Sequence[tuple[float, float]], size: int) -> DetectionParams:
    """Window sizes and aspects covering ``boxes`` given as (relative size, aspect) pairs."""
    rel = np.array([b[0] for b in boxes], dtype=np.float64)
    log_aspect = np.log(np.array([b[1] for b in boxes], dtype=np.float64))
    lo, hi = rel.min() / 1.1, min(rel.max() * 1.1, 1.0)
    lo = min(lo, hi)
    ratio = SIZE_RATIO
    count = int(math.floor(math.log(hi / lo) / math.log(ratio) + 1e-9)) + 1
    if count > MAX_SIZES:
        ratio = (hi / lo) ** (1.0 / (MAX_SIZES - 1))
        count = MAX_SIZES
    sizes = tuple(round(float(lo * ratio**i), 6) for i in range(count))
    if sizes[-1] < hi / math.sqrt(ratio):
        sizes = (*sizes, round(float(hi), 6))
    if log_aspect.max() - log_aspect.min() <= math.log(1.3):
        aspects = (round(float(np.exp(np.median(log_aspect))), 6),)
    else:
        qs = np.quantile(log_aspect, [0.1, 0.5, 0.9])
        picked: list[float] = []
        for q in qs:
            if not picked or q - picked[-1] > math.log(1.15):
                picked.append(float(q))
        aspects = tuple(round(float(math.exp(q)), 6) for q in picked)
    return DetectionParams(sizes=sizes, aspects=aspects, stride=max(1, (size - 2 * context_pixels(size)) // 4))


# ---------------------------------------------------------------- geometry


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between (N, 4) and (M, 4) boxes given as x, y, w, h."""
    ax0, ay0 = a[:, 0:1], a[:, 1:2]
    ax1, ay1 = ax0 + a[:, 2:3], ay0 + a[:, 3:4]
    bx0, by0 = b[None, :, 0], b[None, :, 1]
    bx1, by1 = bx0 + b[None, :, 2], by0 + b[None, :, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = (a[:, 2:3] * a[:, 3:4]) + (b[None, :, 2] * b[None, :, 3]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def containment(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M): the share of each b box's area that lies inside each a box."""
    ax1, ay1 = a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx1, by1 = b[None, :, 0] + b[None, :, 2], b[None, :, 1] + b[None, :, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(a[:, 0:1], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(a[:, 1:2], b[None, :, 1]), 0, None)
    return iw * ih / np.maximum(b[None, :, 2] * b[None, :, 3], 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, overlap: float) -> list[int]:
    """Greedy non-maximum suppression; ties broken by index so the result is deterministic.

    A window is suppressed by a better one when their IoU exceeds ``overlap``, or when it lies
    almost wholly (CONTAINED) inside the better one: a window on a part of an object (say, the
    corner of a square) can score high, and its IoU with the whole object's box is small.
    """
    order = np.lexsort((np.arange(len(scores)), -scores))
    keep: list[int] = []
    alive = np.ones(len(scores), dtype=bool)
    for i in order:
        if not alive[i]:
            continue
        keep.append(int(i))
        if len(keep) >= MAX_BOXES:
            break
        best = boxes[i : i + 1]
        alive &= (iou_matrix(best, boxes)[0] <= overlap) & (containment(best, boxes)[0] < CONTAINED)
    return keep


# ---------------------------------------------------------------- windows


def context_pixels(size: int) -> int:
    """Pixels of context on each side of a window's S x S patch; the window itself fills the core."""
    return size // 8


def _window_shapes(width: int, height: int, params: DetectionParams) -> list[tuple[float, float]]:
    short = min(width, height)
    shapes: list[tuple[float, float]] = []
    for s in params.sizes:
        for a in params.aspects:
            ww = min(s * short * math.sqrt(a), width)
            wh = min(s * short / math.sqrt(a), height)
            shape = (round(ww, 3), round(wh, 3))
            if shape not in shapes and ww >= 1 and wh >= 1:
                shapes.append(shape)
    return shapes


def _positions(extent: int, core: int, stride: int) -> np.ndarray:
    pos = np.arange(0, extent - core + 1, stride)
    if pos[-1] != extent - core:  # make the grid reach the right/bottom edge
        pos = np.append(pos, extent - core)
    return pos


def scan_windows(img: Image.Image, params: DetectionParams, size: int) -> tuple[np.ndarray, np.ndarray]:
    """All scanning windows of an RGB image: boxes (M, 4) in its pixels and patches (M, S, S, 3) uint8.

    Each patch shows its window in the central (S - 2c) pixels plus c pixels of the surrounding
    image (edge-replicated beyond the border): with that context the classifier can tell a whole
    object from a window on part of one, which otherwise scores just as high.
    """
    width, height = img.size
    ctx = context_pixels(size)
    core = size - 2 * ctx
    shapes = _window_shapes(width, height, params)
    stride = params.stride

    def grid(ww: float, wh: float) -> tuple[int, int]:
        return max(core, round(width * core / ww)), max(core, round(height * core / wh))

    while True:  # widen the stride until the window count is bounded
        total = sum(len(_positions(nw, core, stride)) * len(_positions(nh, core, stride))
                    for nw, nh in (grid(ww, wh) for ww, wh in shapes))
        if total <= MAX_WINDOWS or stride >= core:
            break
        stride += 1
    base = img
    if shapes:
        target_w = grid(min(ww for ww, _ in shapes), height)[0]
        if width > 2 * target_w:  # shrink huge images once, then resize every scale from there
            base = img.resize((target_w, max(1, round(height * target_w / width))), Image.Resampling.BILINEAR)
    boxes, patches = [], []
    for ww, wh in shapes:
        nw, nh = grid(ww, wh)
        arr = np.asarray(base.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.uint8)
        arr = np.pad(arr, ((ctx, ctx), (ctx, ctx), (0, 0)), mode="edge")
        xs, ys = _positions(nw, core, stride), _positions(nh, core, stride)
        view = sliding_window_view(arr, (size, size, 3))[:, :, 0]  # (nh+2c-S+1, nw+2c-S+1, S, S, 3)
        patches.append(view[ys][:, xs].reshape(-1, size, size, 3))
        fx, fy = width / nw, height / nh
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        n = gx.size
        boxes.append(np.stack([gx.ravel() * fx, gy.ravel() * fy, np.full(n, core * fx), np.full(n, core * fy)], 1))
    if not boxes:
        return np.zeros((0, 4)), np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.concatenate(boxes), np.concatenate(patches)


class ContextCropper:
    """Cuts a box plus its context ring out of an image, as scan_windows would see it."""

    def __init__(self, img: Image.Image, size: int, max_box: float) -> None:
        self.size = size
        ctx = context_pixels(size)
        self.ratio = ctx / (size - 2 * ctx)  # context width per unit of box width
        self.pad = int(math.ceil(max_box * self.ratio * 1.5)) + 2
        arr = np.pad(np.asarray(img), ((self.pad, self.pad), (self.pad, self.pad), (0, 0)), mode="edge")
        self.padded = Image.fromarray(arr)

    def __call__(self, box: Sequence[float]) -> np.ndarray:
        x, y, w, h = box
        mx, my = w * self.ratio, h * self.ratio
        region = (x - mx + self.pad, y - my + self.pad, x + w + mx + self.pad, y + h + my + self.pad)
        patch = self.padded.resize((self.size, self.size), Image.Resampling.BILINEAR, box=region)
        return np.asarray(patch, dtype=np.uint8)


def clip_box(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float] | None:
    """The box cut to the image, or None when less than a pixel of it remains."""
    x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
    x1, y1 = min(float(width), float(box[0]) + float(box[2])), min(float(height), float(box[1]) + float(box[3]))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


# ---------------------------------------------------------------- training examples


def positive_patches(
    img: Image.Image, boxes: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each box's crop plus up to JITTERS shifted/rescaled crops overlapping it by IoU >= 0.6.

    Returns the patches and, for each, the index of its box.
    """
    width, height = img.size
    crop = ContextCropper(img, size, float(boxes[:, 2:].max() * 1.15) if len(boxes) else 1.0)
    out, owner = [], []
    for k, box in enumerate(boxes):
        out.append(crop(box))
        owner.append(k)
        x, y, w, h = box
        made = 0
        for _ in range(JITTERS * 4):
            if made == JITTERS:
                break
            dx, dy = rng.uniform(-0.12, 0.12, 2) * (w, h)
            s = math.exp(rng.uniform(-0.12, 0.12))
            cand = (x + dx + w * (1 - s) / 2, y + dy + h * (1 - s) / 2, w * s, h * s)
            clipped = clip_box(cand, width, height)
            if clipped is None or iou_matrix(np.array([clipped]), box[None])[0, 0] < 0.6:
                continue
            out.append(crop(clipped))
            owner.append(k)
            made += 1
    if not out:
        return np.zeros((0, size, size, 3), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    return np.stack(out), np.array(owner, dtype=np.int64)


def background_patches(
    img: Image.Image, boxes: np.ndarray, params: DetectionParams, size: int, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Background examples among the scanning windows, drawn with ``rng``.

    Up to ``count`` windows that overlap no box (IoU < BACKGROUND_IOU), plus up to
    NEAR_MISSES_PER_BOX per box that cut through an object (IoU < NEAR_MISS_IOU): without
    the latter, half an object scores like an object and survives non-maximum suppression
    next to the right box as a false positive.
    """
    windows, patches = scan_windows(img, params, size)
    overlap = iou_matrix(windows, boxes).max(axis=1) if len(boxes) else np.zeros(len(windows))
    free = np.flatnonzero(overlap < BACKGROUND_IOU)
    near = np.flatnonzero((overlap >= BACKGROUND_IOU) & (overlap < NEAR_MISS_IOU))
    if len(free) > count:
        free = rng.choice(free, size=count, replace=False)
    if len(near) > NEAR_MISSES_PER_BOX * len(boxes):
        near = rng.choice(near, size=NEAR_MISSES_PER_BOX * len(boxes), replace=False)
    return np.ascontiguousarray(patches[np.sort(np.concatenate([free, near]).astype(np.int64))])


# ---------------------------------------------------------------- decoding scores into boxes


def detections(
    windows: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    confidence_thresh: float,
    overlap_thresh: float,
) -> list[dict]:
    """Scored windows -> boxes: drop background and weak windows, suppress overlaps, refine.

    ``classes`` are the classifier's outputs with the background last.
    """
    if len(windows) == 0:
        return []
    best = probs.argmax(axis=1)
    conf = probs[np.arange(len(best)), best]
    background = len(classes) - 1
    candidates = np.flatnonzero((best != background) & (conf >= confidence_thresh))
    if len(candidates) == 0:
        return []
    cand_boxes, cand_conf, cand_label = windows[candidates], conf[candidates], best[candidates]
    out = []
    for k in nms(cand_boxes, cand_conf, overlap_thresh):
        same = cand_label == cand_label[k]
        close = (iou_matrix(cand_boxes[k : k + 1], cand_boxes)[0] >= REFINE_IOU) & same
        wts = cand_conf[close]
        refined = (cand_boxes[close] * wts[:, None]).sum(axis=0) / wts.sum()
        x, y, w, h = (float(v) for v in refined)
        out.append({
            "label": classes[int(cand_label[k])],
            "confidence": round(float(cand_conf[k]), 6),
            "x": round(x, 2),
            "y": round(y, 2),
            "w": round(w, 2),
            "h": round(h, 2),
        })
    return out


def match(
    truth: Sequence[dict], predicted: Sequence[dict], iou: float = MATCH_IOU
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Greedy matching by confidence: (true label, matched predicted label or None) and unmatched predictions.

    A prediction matches the unmatched true box it overlaps most, if IoU >= ``iou``, whatever the labels,
    so a wrong label shows up as confusion rather than as a miss plus a false positive.
    """
    t = np.array([[b["x"], b["y"], b["w"], b["h"]] for b in truth], dtype=np.float64).reshape(-1, 4)
    p = np.array([[b["x"], b["y"], b["w"], b["h"]] for b in predicted], dtype=np.float64).reshape(-1, 4)
    overlaps = iou_matrix(p, t) if len(p) and len(t) else np.zeros((len(p), len(t)))
    taken: dict[int, str] = {}
    extra: list[str] = []
    for i in sorted(range(len(predicted)), key=lambda i: -predicted[i]["confidence"]):
        row = overlaps[i].copy() if len(t) else np.zeros(0)
        for j in taken:
            row[j] = -1
        j = int(row.argmax()) if len(row) else -1
        if j >= 0 and row[j] >= iou:
            taken[j] = predicted[i]["label"]
        else:
            extra.append(predicted[i]["label"])
    pairs = [(truth[j]["label"], taken.get(j)) for j in range(len(truth))]
    return pairs, extra
