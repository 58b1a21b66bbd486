"""Validation of ``training.config`` and ``model_type``: one checked, typed value per run.

Every message names the key as the user wrote it (``training.config.<key>``) and the
offending value, because these strings reach the CLI unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from reconciler.local.trainer.errors import TrainingError

MODEL_TYPES = ("small", "medium", "large")
MAX_STEPS = 100_000
_PREFIX = "training.config."


@dataclass(frozen=True)
class TrainConfig:
    """The knobs of one run, with the documented defaults."""

    steps: int = 300
    learning_rate: float = 0.1
    l2: float = 1e-4
    batch_size: int | None = None  # None: full batch
    holdout: float = 0.2
    seed: int = 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _fail(key: str, expected: str, value: Any) -> TrainingError:
    return TrainingError(f"{_PREFIX}{key}: expected {expected}, got {value!r}")


def parse_config(config: dict[str, Any] | None, *, seed: int = 0) -> TrainConfig:
    """Check a config mapping; unknown keys and wrong types raise TrainingError.

    ``seed`` is the caller's default; a ``seed`` key in the config wins over it.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise TrainingError(f"training.config: expected a mapping, got {config!r}")
    known = {f for f in TrainConfig.__dataclass_fields__}
    unknown = sorted(str(k) for k in config if k not in known)
    if unknown:
        raise TrainingError(
            f"{_PREFIX}{unknown[0]}: unknown key (known: {', '.join(sorted(known))})"
        )
    out: dict[str, Any] = {}
    if "steps" in config:
        v = config["steps"]
        if not _is_int(v) or v <= 0:
            raise _fail("steps", "a positive integer", v)
        if v > MAX_STEPS:
            raise _fail("steps", f"an integer of at most {MAX_STEPS}", v)
        out["steps"] = v
    if "learning_rate" in config:
        v = config["learning_rate"]
        if not _is_number(v) or v <= 0:
            raise _fail("learning_rate", "a positive number", v)
        out["learning_rate"] = float(v)
    if "l2" in config:
        v = config["l2"]
        if not _is_number(v) or v < 0:
            raise _fail("l2", "a number >= 0", v)
        out["l2"] = float(v)
    if "batch_size" in config:
        v = config["batch_size"]
        if v is not None and (not _is_int(v) or v <= 0):
            raise _fail("batch_size", "a positive integer or null", v)
        out["batch_size"] = v
    if "holdout" in config:
        v = config["holdout"]
        if not _is_number(v) or not 0 <= v < 1:
            raise _fail("holdout", "a fraction >= 0 and < 1", v)
        out["holdout"] = float(v)
    v = config.get("seed", seed)
    if not _is_int(v) or v < 0:
        raise _fail("seed", "an integer >= 0", v)
    out["seed"] = v
    return TrainConfig(**out)


def check_model_type(model_type: Any) -> str:
    """The model type name, or TrainingError naming the bad value."""
    if model_type not in MODEL_TYPES:
        raise TrainingError(f"training.model_type: expected one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    return model_type
