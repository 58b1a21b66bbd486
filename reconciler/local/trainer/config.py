"""Validation of ``training.config`` and ``model_type``: one checked, typed value per run.

Every message names the key as the user wrote it (``training.config.<key>``) and the
offending value, because these strings reach the CLI unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


def _problem(key: str, expected: str, value: Any) -> str:
    return f"{_PREFIX}{key}: expected {expected}, got {value!r}"


def _steps(v: Any) -> str | None:
    if not _is_int(v) or v <= 0:
        return "a positive integer"
    return f"an integer of at most {MAX_STEPS}" if v > MAX_STEPS else None


# key -> what a value must be (None: fine), in the order problems are reported.
_RULES: dict[str, Callable[[Any], str | None]] = {
    "steps": _steps,
    "learning_rate": lambda v: None if _is_number(v) and v > 0 else "a positive number",
    "l2": lambda v: None if _is_number(v) and v >= 0 else "a number >= 0",
    "batch_size": lambda v: None if v is None or (_is_int(v) and v > 0) else "a positive integer or null",
    "holdout": lambda v: None if _is_number(v) and 0 <= v < 1 else "a fraction >= 0 and < 1",
}
_FLOATS = frozenset({"learning_rate", "l2", "holdout"})


def config_problems(config: Any, *, seed: int = 0) -> list[str]:
    """Every problem of a config mapping, one ``training.config.<key>: ...`` message each, so that
    validate can report them all at once rather than one per run."""
    return _checked(config, seed)[1]


def parse_config(config: dict[str, Any] | None, *, seed: int = 0) -> TrainConfig:
    """Check a config mapping; unknown keys and wrong types raise TrainingError (the first problem).

    ``seed`` is the caller's default; a ``seed`` key in the config wins over it.
    """
    values, problems = _checked(config, seed)
    if problems:
        raise TrainingError(problems[0])
    return TrainConfig(**values)


def _checked(config: Any, seed: int) -> tuple[dict[str, Any], list[str]]:
    """The typed values of ``config`` and every problem found in it (unknown keys first)."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        return {}, [f"training.config: expected a mapping, got {config!r}"]
    known = ", ".join(sorted(TrainConfig.__dataclass_fields__))
    problems = [
        f"{_PREFIX}{k}: unknown key (known: {known})"
        for k in sorted(str(k) for k in config if k not in TrainConfig.__dataclass_fields__)
    ]
    values: dict[str, Any] = {}
    for key, rule in _RULES.items():
        if key not in config:
            continue
        v = config[key]
        expected = rule(v)
        if expected is not None:
            problems.append(_problem(key, expected, v))
        else:
            values[key] = float(v) if key in _FLOATS else v
    v = config.get("seed", seed)
    if not _is_int(v) or v < 0:
        problems.append(_problem("seed", "an integer >= 0", v))
    values["seed"] = v
    return values, problems


def check_model_type(model_type: Any) -> str:
    """The model type name, or TrainingError naming the bad value."""
    if model_type not in MODEL_TYPES:
        raise TrainingError(f"training.model_type: expected one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    return model_type
