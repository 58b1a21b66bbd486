"""Object detection through the trainer's public API, on generated scenes with known boxes.

A scene is 96x96 noise around a random grey, with 1-3 circles or squares (16-28 px, random
vivid colours, not touching). The detector trains on 40 scenes; on 20 scenes it never saw,
the contract is: at least 80% of the objects are found (a predicted box of the right label
with IoU >= 0.5), and false positives stay under 20% of the number of objects.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from reconciler.local.trainer import TrainingCanceled, TrainingError, TrainSample, load_predictor, train
from reconciler.local.trainer.detection import iou_matrix, match, nms

SCENE = 96
CONFIG = {"steps": 300, "learning_rate": 1.5}


def scene(rng: np.random.Generator, max_objects: int = 3, size: int = SCENE) -> tuple[bytes, list[dict]]:
    noise = rng.normal(rng.uniform(90, 170), 22, (size, size, 3))
    img = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    boxes: list[dict] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(50):
            s = int(rng.integers(16, 29))
            x, y = int(rng.integers(2, size - s - 2)), int(rng.integers(2, size - s - 2))
            apart = all(
                x + s + 3 < b["x"] or b["x"] + b["w"] + 3 < x or y + s + 3 < b["y"] or b["y"] + b["h"] + 3 < y
                for b in boxes
            )
            if apart:
                break
        else:
            continue
        kind = "circle" if rng.random() < 0.5 else "square"
        colour = tuple(int(c) for c in rng.choice([0, 40, 215, 255], 3))
        shape = draw.ellipse if kind == "circle" else draw.rectangle
        shape([x, y, x + s - 1, y + s - 1], fill=colour)
        boxes.append({"label": kind, "x": x, "y": y, "w": s, "h": s})
    return encode(img), boxes


def encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def score(scenes: list[tuple[bytes, list[dict]]], predictions: list[dict]) -> tuple[float, int, int]:
    """(share of objects found with the right label at IoU >= 0.5, false positives, objects)."""
    found = objects = false_positives = 0
    for (_, truth), prediction in zip(scenes, predictions, strict=True):
        pairs, extra = match(truth, prediction["boxes"], iou=0.5)
        objects += len(pairs)
        found += sum(t == p for t, p in pairs)
        false_positives += len(extra)
    return found / objects, false_positives, objects


@pytest.fixture(scope="module")
def detector():
    rng = np.random.default_rng(1)
    training = [scene(rng) for _ in range(40)]
    unseen = [scene(rng) for _ in range(20)]
    result = train([TrainSample("scene", data, tuple(boxes)) for data, boxes in training], config=CONFIG)
    return result, unseen


def test_detector_finds_objects_in_unseen_scenes(detector):
    result, unseen = detector
    assert result.detection is True
    predictor = load_predictor(result.weights)
    assert predictor.detection is True and predictor.classes == ["circle", "square"]
    predictions = predictor.predict([data for data, _ in unseen])
    recall, false_positives, objects = score(unseen, predictions)
    assert objects >= 30
    assert recall >= 0.8, (recall, false_positives)
    assert false_positives <= 0.2 * objects, (recall, false_positives)
    for p in predictions:
        for box in p["boxes"]:
            assert set(box) == {"label", "confidence", "x", "y", "w", "h"}
            assert box["confidence"] >= 0.5 and box["label"] in predictor.classes
            assert 0 <= box["x"] < SCENE and 0 <= box["y"] < SCENE and box["w"] > 0 and box["h"] > 0


def test_image_label_is_that_of_its_best_box(detector):
    result, unseen = detector
    predictor = load_predictor(result.weights)
    for p in predictor.predict([data for data, _ in unseen[:5]]):
        if p["boxes"]:
            best = max(p["boxes"], key=lambda b: b["confidence"])
            assert (p["label"], p["confidence"]) == (best["label"], best["confidence"])
        assert set(p["scores"]) == {"circle", "square"}
    empty = np.random.default_rng(5).normal(130, 22, (SCENE, SCENE, 3))
    nothing = predictor.predict([encode(Image.fromarray(np.clip(empty, 0, 255).astype(np.uint8)))])[0]
    assert nothing["boxes"] == [] and nothing["label"] is None and nothing["confidence"] == 0.0


def test_thresholds_change_what_is_reported(detector):
    result, unseen = detector
    predictor = load_predictor(result.weights)
    images = [data for data, _ in unseen[:4]]
    default = sum(len(p["boxes"]) for p in predictor.predict(images))
    strict = sum(len(p["boxes"]) for p in predictor.predict(images, confidence_thresh=0.999))
    loose = sum(len(p["boxes"]) for p in predictor.predict(images, confidence_thresh=0.05, overlap_thresh=0.9))
    assert strict < default < loose
    with pytest.raises(ValueError, match="overlap_thresh"):
        predictor.predict(images[:1], overlap_thresh=-0.1)


def test_detector_metrics_are_box_level_on_held_out_scenes(detector):
    result, _ = detector
    m = result.metrics
    assert m["detection"] is True and m["holdout"] is True
    assert m["num_train"] == 32 and m["num_holdout"] == 8  # images
    assert m["recall"] >= 0.8 and 0.0 <= m["accuracy"] <= 1.0
    assert set(m["per_class"]) <= {"circle", "square"}
    assert sum(sum(row.values()) for label, row in m["confusion"].items() if label != "__background__") == m[
        "num_boxes"
    ]
    assert m["steps"] == CONFIG["steps"] and m["final_loss"] > 0


def test_boxes_are_found_at_another_resolution(detector):
    """Window sizes are relative to the image, so the same scene at 2x still gets its boxes (in 2x pixels)."""
    result, unseen = detector
    predictor = load_predictor(result.weights)
    big_scenes = []
    for data, truth in unseen[:6]:
        big = Image.open(io.BytesIO(data)).resize((2 * SCENE, 2 * SCENE), Image.Resampling.BILINEAR)
        big_scenes.append((encode(big), [{**b, **{k: 2 * b[k] for k in "xywh"}} for b in truth]))
    recall, _, _ = score(big_scenes, predictor.predict([data for data, _ in big_scenes]))
    assert recall >= 0.7


def test_detector_training_is_deterministic_and_fine_tunes():
    rng = np.random.default_rng(3)
    scenes = [scene(rng) for _ in range(6)]
    samples = [TrainSample("scene", data, tuple(boxes)) for data, boxes in scenes]
    a = train(samples, config={"steps": 30})
    b = train(list(reversed(samples)), config={"steps": 30})
    assert a.weights == b.weights
    tuned = train(samples, config={"steps": 30}, base_weights=a.weights)
    assert tuned.detection and tuned.metrics["final_loss"] < a.metrics["final_loss"]
    with pytest.raises(TrainingError, match="base model is a detector"):
        train([TrainSample("a", scenes[0][0]), TrainSample("b", scenes[1][0])], base_weights=a.weights)


def test_detector_training_reports_progress_and_can_be_canceled():
    rng = np.random.default_rng(6)
    samples = [TrainSample("scene", data, tuple(boxes)) for data, boxes in (scene(rng) for _ in range(5))]
    seen: list[float] = []
    train(samples, config={"steps": 20}, progress=lambda f: seen.append(f) or True)
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0 and len(seen) >= 10
    with pytest.raises(TrainingCanceled):
        train(samples, config={"steps": 20}, progress=lambda f: f < 0.3)


def test_bad_or_unusable_boxes_are_training_errors():
    data, _ = scene(np.random.default_rng(4))
    with pytest.raises(TrainingError, match=r"samples\[0\].boxes\[0\].w: expected a number, got 'wide'"):
        train([TrainSample("scene", data, ({"label": "circle", "x": 1, "y": 1, "w": "wide", "h": 3},))])
    with pytest.raises(TrainingError, match="width and height must be positive"):
        train([TrainSample("scene", data, ({"label": "circle", "x": 1, "y": 1, "w": 0, "h": 3},))])
    outside = {"label": "circle", "x": 500, "y": 500, "w": 10, "h": 10}
    with pytest.raises(TrainingError, match="no usable box"):
        train([TrainSample("scene", data, (outside,))])


def test_iou_nms_and_matching():
    boxes = np.array([[0, 0, 10, 10], [3, 3, 10, 10], [20, 20, 10, 10], [2, 2, 5, 5]], dtype=float)
    iou = iou_matrix(boxes, boxes)
    assert iou[0, 0] == 1.0 and iou[0, 2] == 0.0 and abs(iou[0, 1] - 49 / 151) < 1e-9
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, overlap=0.3) == [0, 2]  # 1 overlaps 0; 3 lies inside 0
    assert nms(boxes, scores, overlap=0.99) == [0, 1, 2]
    truth = [{"label": "a", "x": 0, "y": 0, "w": 10, "h": 10}, {"label": "b", "x": 20, "y": 20, "w": 10, "h": 10}]
    predicted = [
        {"label": "a", "confidence": 0.9, "x": 1, "y": 0, "w": 10, "h": 10},
        {"label": "a", "confidence": 0.8, "x": 20, "y": 21, "w": 10, "h": 10},
        {"label": "a", "confidence": 0.7, "x": 60, "y": 60, "w": 10, "h": 10},
    ]
    pairs, extra = match(truth, predicted)
    assert pairs == [("a", "a"), ("b", "a")] and extra == ["a"]
