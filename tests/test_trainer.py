"""The embedded trainer through its public API: train(), load_predictor(), Predictor.predict().

Thresholds stated here are the contract the tests hold the trainer to:
- generated colour and shape datasets: held-out accuracy >= 0.9;
- the committed digits example (examples/digits) with its own config: held-out accuracy >= 0.90.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from ruamel.yaml import YAML

from reconciler.local.trainer import (
    InvalidImage,
    InvalidWeights,
    TrainingCanceled,
    TrainingError,
    TrainSample,
    load_predictor,
    train,
)

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "examples" / "digits"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}


def png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def noisy_square(colour: tuple[int, int, int], rng: random.Random, size: int = 32) -> bytes:
    """A coloured square at a random place and size on a noisy grey background."""
    arr = np.random.default_rng(rng.randrange(2**32)).normal(128, 30, (size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    side = rng.randint(10, 20)
    x, y = rng.randint(0, size - side), rng.randint(0, size - side)
    jitter = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour)
    ImageDraw.Draw(img).rectangle([x, y, x + side - 1, y + side - 1], fill=jitter)
    return png(img)


def grey_shape(kind: str, rng: random.Random, size: int = 32) -> bytes:
    """A dark circle or square (random size/place) on a noisy light background, grayscale."""
    arr = np.random.default_rng(rng.randrange(2**32)).normal(200, 20, (size, size))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    side = rng.randint(14, 24)
    x, y = rng.randint(0, size - side), rng.randint(0, size - side)
    draw = ImageDraw.Draw(img)
    shade = rng.randint(20, 90)
    if kind == "circle":
        draw.ellipse([x, y, x + side - 1, y + side - 1], fill=shade)
    else:
        draw.rectangle([x, y, x + side - 1, y + side - 1], fill=shade)
    return png(img)


def colour_dataset(per_class: int = 20, seed: int = 1) -> list[TrainSample]:
    rng = random.Random(seed)
    return [TrainSample(name, noisy_square(c, rng)) for name, c in COLOURS.items() for _ in range(per_class)]


@pytest.fixture(scope="module")
def colours() -> list[TrainSample]:
    return colour_dataset()


@pytest.fixture(scope="module")
def trained(colours):
    return train(colours, config={"steps": 150})


# ---------------------------------------------------------------- learning


def test_separable_colours_reach_90_percent_on_held_out(colours):
    result = train(colours, config={"steps": 200, "learning_rate": 0.1})
    m = result.metrics
    assert m["holdout"] is True
    assert m["num_holdout"] == 12 and m["num_train"] == 48  # 20% of 20 per class
    assert m["accuracy"] >= 0.9, m
    assert set(m["per_class"]) == set(COLOURS)
    assert sum(n for row in m["confusion"].values() for n in row.values()) == m["num_holdout"]
    assert m["steps"] == 200 and m["final_loss"] > 0 and m["train_seconds"] > 0
    assert result.detection is False


def test_shapes_in_grayscale_reach_90_percent_on_held_out():
    rng = random.Random(7)
    samples = [TrainSample(kind, grey_shape(kind, rng)) for kind in ("circle", "square") for _ in range(40)]
    result = train(samples, config={"steps": 300, "learning_rate": 0.5})
    assert result.metrics["accuracy"] >= 0.9, result.metrics
    # and unseen images of each kind are told apart
    unseen = [(kind, grey_shape(kind, rng)) for kind in ("circle", "square") for _ in range(20)]
    predictions = load_predictor(result.weights).predict([data for _, data in unseen])
    right = sum(p["label"] == kind for (kind, _), p in zip(unseen, predictions, strict=True))
    assert right / len(unseen) >= 0.9


def test_more_steps_give_a_lower_loss(colours):
    one = train(colours, config={"steps": 1})
    many = train(colours, config={"steps": 300})
    assert many.metrics["final_loss"] < one.metrics["final_loss"] * 0.5
    assert many.metrics["accuracy"] >= one.metrics["accuracy"]


def test_digits_example_reaches_90_percent_on_held_out():
    spec = YAML(typ="safe").load((DIGITS / "modelsync.yaml").read_text())
    model = spec["models"]["digits"]
    samples = [
        TrainSample(label, path.read_bytes())
        for label in model["classes"]
        for path in sorted((DIGITS / "data" / label).glob("*.png"))
    ]
    assert len(samples) == 1797 and len(model["classes"]) == 10
    result = train(samples, model_type=model["training"]["model_type"], config=model["training"]["config"])
    m = result.metrics
    assert m["holdout"] is True and m["num_holdout"] >= 300
    assert m["accuracy"] >= 0.90, m
    assert all(acc >= 0.7 for acc in m["per_class"].values()), m["per_class"]


# ---------------------------------------------------------------- determinism


def test_same_samples_in_any_order_give_identical_weights(colours):
    shuffled = list(colours)
    random.Random(3).shuffle(shuffled)
    a = train(colours, config={"steps": 50})
    b = train(shuffled, config={"steps": 50})
    assert a.weights == b.weights
    assert a.metrics["accuracy"] == b.metrics["accuracy"]


def test_mini_batches_are_seeded(colours):
    cfg = {"steps": 40, "batch_size": 16}
    a = train(colours, config={**cfg, "seed": 1})
    b = train(list(reversed(colours)), config={**cfg, "seed": 1})
    c = train(colours, config={**cfg, "seed": 2})
    assert a.weights == b.weights
    assert a.weights != c.weights


@pytest.mark.parametrize("change", [{"learning_rate": 0.2}, {"steps": 51}, {"l2": 0.01}, {"holdout": 0.4}])
def test_config_changes_change_the_weights(colours, change):
    base = train(colours, config={"steps": 50})
    other = train(colours, config={"steps": 50, **change})
    assert base.weights != other.weights


def test_model_types_have_their_own_resolution(colours):
    small = train(colours, model_type="small", config={"steps": 20})
    large = train(colours, model_type="large", config={"steps": 20})
    assert len(large.weights) > len(small.weights)
    assert load_predictor(large.weights).model_type == "large"


# ---------------------------------------------------------------- fine-tuning


def test_fine_tuning_starts_from_the_base(colours, trained):
    scratch = train(colours, config={"steps": 5})
    tuned = train(colours, config={"steps": 5}, base_weights=trained.weights)
    assert tuned.metrics["final_loss"] < scratch.metrics["final_loss"]
    assert tuned.metrics["fine_tuned"] is True
    assert load_predictor(tuned.weights).classes == load_predictor(trained.weights).classes == sorted(COLOURS)


def test_fine_tuning_adds_a_new_class_by_name(colours, trained):
    rng = random.Random(11)
    yellow = [TrainSample("yellow", noisy_square((230, 220, 30), rng)) for _ in range(20)]
    tuned = train(colours + yellow, config={"steps": 100}, base_weights=trained.weights)
    predictor = load_predictor(tuned.weights)
    assert predictor.classes == ["blue", "green", "red", "yellow"]
    assert tuned.metrics["accuracy"] >= 0.85
    assert predictor.predict([noisy_square((230, 220, 30), rng)])[0]["label"] == "yellow"


def test_fine_tuning_needs_the_same_model_type(colours, trained):
    with pytest.raises(TrainingError, match="model_type 'small', not 'medium'"):
        train(colours, model_type="medium", base_weights=trained.weights)
    with pytest.raises(TrainingError, match="training.base"):
        train(colours, base_weights=b"not weights")


# ---------------------------------------------------------------- progress and cancel


def test_progress_is_reported_and_reaches_one(colours):
    seen: list[float] = []
    train(colours, config={"steps": 100}, progress=lambda f: seen.append(f) or True)
    assert len(seen) >= 10
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0


def test_progress_returning_false_cancels(colours):
    calls: list[float] = []

    def stop_half_way(fraction: float) -> bool:
        calls.append(fraction)
        return fraction < 0.5

    with pytest.raises(TrainingCanceled):
        train(colours, config={"steps": 100}, progress=stop_half_way)
    assert 0.5 <= calls[-1] < 1.0


# ---------------------------------------------------------------- hold-out


def test_holdout_keeps_at_least_one_per_class_and_falls_back_to_training_data():
    rng = random.Random(5)
    two_each = [TrainSample(n, noisy_square(c, rng)) for n, c in COLOURS.items() for _ in range(2)]
    m = train(two_each, config={"steps": 20}).metrics
    assert m["num_holdout"] == 3 and m["num_train"] == 3 and m["holdout"] is True
    one_each = [TrainSample(n, noisy_square(c, rng)) for n, c in COLOURS.items()]
    m = train(one_each, config={"steps": 20}).metrics
    assert m["holdout"] is False and m["num_holdout"] == 0 and m["num_train"] == 3
    assert m["accuracy"] == 1.0  # computed on the training data
    m = train(two_each, config={"steps": 20, "holdout": 0}).metrics
    assert m["holdout"] is False and m["num_train"] == 6


def test_holdout_is_chosen_by_content_not_order():
    from reconciler.local.trainer.dataset import prepare, split_holdout

    rng = random.Random(8)
    samples = [TrainSample(n, noisy_square(c, rng)) for n, c in COLOURS.items() for _ in range(10)]
    by_label = lambda it: it.label  # noqa: E731
    _, hold_a = split_holdout(prepare(samples), 0.2, by_label)
    _, hold_b = split_holdout(prepare(list(reversed(samples))), 0.2, by_label)
    assert [it.digest for it in hold_a] == [it.digest for it in hold_b]
    assert len(hold_a) == 6  # 2 of 10 per class
    # one more red image moves at most one image between the splits
    _, hold_c = split_holdout(prepare([*samples, TrainSample("red", noisy_square(COLOURS["red"], rng))]), 0.2, by_label)
    assert len({it.digest for it in hold_a} ^ {it.digest for it in hold_c}) <= 2


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"steps": -3}, "training.config.steps: expected a positive integer, got -3"),
        ({"steps": 0}, "training.config.steps: expected a positive integer, got 0"),
        ({"steps": "10"}, "training.config.steps: expected a positive integer, got '10'"),
        ({"steps": True}, "training.config.steps: expected a positive integer, got True"),
        ({"learning_rate": 0}, "training.config.learning_rate: expected a positive number, got 0"),
        ({"learning_rate": "fast"}, "training.config.learning_rate: expected a positive number, got 'fast'"),
        ({"l2": -1}, "training.config.l2: expected a number >= 0, got -1"),
        ({"batch_size": 0}, "training.config.batch_size: expected a positive integer or null, got 0"),
        ({"holdout": 1.0}, "training.config.holdout: expected a fraction >= 0 and < 1, got 1.0"),
        ({"seed": -1}, "training.config.seed: expected an integer >= 0, got -1"),
        ({"stepz": 10}, "training.config.stepz: unknown key"),
    ],
)
def test_bad_config_is_a_training_error_naming_key_and_value(colours, config, message):
    with pytest.raises(TrainingError) as err:
        train(colours, config=config)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_bad_model_type_and_too_few_classes(colours):
    with pytest.raises(TrainingError, match="training.model_type: expected one of small, medium, large, got 'huge'"):
        train(colours, model_type="huge")
    reds = [s for s in colours if s.label == "red"]
    with pytest.raises(TrainingError, match="at least 2 classes"):
        train(reds)
    with pytest.raises(TrainingError, match="at least 2 classes"):
        train([])
    with pytest.raises(TrainingError, match=r"samples\[0\].label"):
        train([TrainSample("", b"x")])


def test_non_image_bytes_are_invalid_image(colours, trained):
    predictor = load_predictor(trained.weights)
    with pytest.raises(InvalidImage, match=r"images\[1\]"):
        predictor.predict([colours[0].data, b"%PDF-1.4 definitely not an image"])
    with pytest.raises(InvalidImage):
        predictor.predict([colours[0].data[:40]])  # a truncated PNG
    with pytest.raises(InvalidImage):
        train([*colours, TrainSample("red", b"\x00" * 100)])
    assert issubclass(InvalidImage, ValueError) and issubclass(TrainingError, ValueError)


def test_weights_are_checked_on_load(trained):
    with pytest.raises(InvalidWeights):
        load_predictor(b"garbage")
    with pytest.raises(InvalidWeights):
        load_predictor(trained.weights[: len(trained.weights) // 2])


# ---------------------------------------------------------------- prediction


def test_prediction_shape_and_thresholds(colours, trained):
    predictor = load_predictor(trained.weights)
    assert predictor.classes == ["blue", "green", "red"] and predictor.detection is False
    rng = random.Random(99)
    images = [noisy_square(c, rng) for c in COLOURS.values()]
    out = predictor.predict(images)
    assert [p["label"] for p in out] == list(COLOURS)
    for p in out:
        assert set(p) == {"label", "confidence", "scores", "boxes"}
        assert p["boxes"] == []
        assert abs(sum(p["scores"].values()) - 1.0) < 1e-4
        assert p["confidence"] == max(p["scores"].values())
        assert 0.0 <= p["confidence"] <= 1.0
    assert predictor.predict([]) == []
    unsure = predictor.predict(images[:1], confidence_thresh=1.0)[0]
    assert unsure["label"] is None and unsure["confidence"] == out[0]["confidence"]
    with pytest.raises(ValueError, match="confidence_thresh"):
        predictor.predict(images[:1], confidence_thresh=2)


def test_prediction_accepts_common_formats(trained):
    predictor = load_predictor(trained.weights)
    red = Image.new("RGB", (40, 30), (220, 30, 30))
    rgba = Image.new("RGBA", (32, 32), (220, 30, 30, 255))
    variants = [png(red, "JPEG"), png(rgba), png(red.convert("P"), "GIF"), png(red, "BMP"), png(red, "WEBP")]
    for p in predictor.predict(variants):
        assert p["label"] == "red"
    grey = predictor.predict([png(red.convert("L"))])[0]
    assert grey["label"] in predictor.classes


def test_weights_are_a_plain_npz_without_pickle(trained):
    with np.load(io.BytesIO(trained.weights), allow_pickle=False) as z:
        assert {"format_version", "classes", "model_type", "mean", "scale", "w", "b", "detection"} <= set(z.files)
        assert list(z["classes"]) == ["blue", "green", "red"]
        assert str(z["model_type"]) == "small"


def test_trainer_does_not_use_scikit_learn():
    for path in (REPO / "reconciler").rglob("*.py"):
        assert "sklearn" not in path.read_text(encoding="utf-8"), path
