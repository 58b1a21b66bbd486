"""Semantic checks: rules about how the parts of a spec fit together.

They read the parsed data (after provider substitution) defensively rather than the
validated Spec, so they still run when some unrelated part failed schema validation:
one bad field does not hide a duplicate uid elsewhere. Anything they cannot make
sense of they skip; schema validation reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from specs.diagnostics import Issue, SpecPath, format_path
from specs.messages import suggest
from specs.models import INFERENCE_ONLY_PROVIDERS, PROVIDER_FIELDS, TrainingSpec
from specs.names import name_problem
from specs.yamlread import plain_text

Locate = Callable[[SpecPath], tuple[int, int]]


def check_spec(data: dict[str, Any], locate: Locate) -> list[Issue]:
    """Every semantic problem in the parsed spec ``data``."""
    issues = _check_names(data)
    models = data.get("models")
    if not isinstance(models, dict):
        return issues
    names = _provider_names(data.get("providers"))
    titles: dict[tuple[str, str], str] = {}  # (provider, title) -> first model key
    for key, model in models.items():
        if not isinstance(model, dict):
            continue
        provider = _provider(key, model, names, issues)
        kind = _provider_type(data.get("providers"), provider)
        if kind in INFERENCE_ONLY_PROVIDERS:
            _check_inference_only(key, model, provider, kind, issues)
        else:
            _check_classes(key, model, issues)
            _check_training(key, model, issues)
            _check_boxes(key, model, issues)
        _check_uids(key, model, locate, issues)
        title = plain_text(model.get("title", key))
        if provider is not None and isinstance(title, str):
            first = titles.setdefault((provider, title), key)
            if first != key:
                where = ("models", key, "title") if "title" in model else ("models", key)
                message = f"title '{title}' is already used by model '{first}' on provider '{provider}'"
                issues.append(Issue(where, message, at="value" if "title" in model else "node"))
    return issues


def _check_names(data: dict[str, Any]) -> list[Issue]:
    """Provider names, model keys and class names: not empty, and no control characters."""
    found: list[tuple[SpecPath, str]] = []
    providers, models = data.get("providers"), data.get("models")
    if isinstance(providers, dict):
        found += [(("providers", name), "provider name") for name in providers]
    for key, model in models.items() if isinstance(models, dict) else ():
        found.append((("models", key), "model key"))
        classes = model.get("classes") if isinstance(model, dict) else None
        if isinstance(classes, dict):
            found += [(("models", key, "classes", name), "class name") for name in classes]
    issues = []
    for path, what in found:
        problem = name_problem(what, path[-1]) if isinstance(path[-1], str) else None
        if problem is not None:
            issues.append(Issue(path, problem, at="key"))
    return issues


def _provider_names(raw: Any) -> list[str] | None:
    """Declared provider names (["local"] when none), or None when the section is unusable."""
    if raw is None or raw == {}:
        return ["local"]
    return list(raw) if isinstance(raw, dict) else None


def _provider(key: str, model: dict[str, Any], names: list[str] | None, issues: list[Issue]) -> str | None:
    """The provider name the model resolves to, or None when it cannot be told."""
    if names is None:
        return None
    name = plain_text(model.get("provider"))
    if name is not None:
        if not isinstance(name, str):
            return None  # a type error: schema validation reports it
        if name in names:
            return name
        close = suggest(name, names)
        hint = f"did you mean '{close}'?" if close else "declared: " + ", ".join(names)
        issues.append(Issue(("models", key, "provider"), f"unknown provider '{name}' ({hint})", at="value"))
        return None
    if len(names) == 1:
        return names[0]
    issues.append(Issue(("models", key), f"provider is required when several are declared (one of {', '.join(names)})"))
    return None


def _provider_type(raw: Any, name: str | None) -> str | None:
    """The type of provider ``name`` ("local" for the implicit default), or None when it cannot be told."""
    if name is None:
        return None
    if raw is None or raw == {}:
        return "local" if name == "local" else None
    section = raw.get(name) if isinstance(raw, dict) else None
    kind = section.get("type") if isinstance(section, dict) else None
    return kind if isinstance(kind, str) and kind in PROVIDER_FIELDS else None


def _check_inference_only(key: str, model: dict[str, Any], provider: str, kind: str, issues: list[Issue]) -> None:
    """A model on an inference-only provider names one built in the vendor's tools: nothing to upload or train."""
    cannot = {"classes": "upload samples or create classes", "training": "train"}
    for field, what in cannot.items():
        if field in model:
            message = (
                f"provider '{provider}' is {kind}, which only runs inference on models built in its own tools: "
                f"it cannot {what} (remove {field}:)"
            )
            issues.append(Issue(("models", key, field), message, at="key"))


def _check_classes(key: str, model: dict[str, Any], issues: list[Issue]) -> None:
    """A model that modelsync feeds needs one class or more."""
    if "classes" not in model:
        issues.append(Issue(("models", key), "missing required key 'classes'"))
    elif model["classes"] == {}:
        message = f"model '{key}' has no classes; declare at least one"
        issues.append(Issue(("models", key, "classes"), message, at="value"))


def _samples(model: dict[str, Any]):
    """(class name, index, entry) of every sample the model declares, skipping what is malformed."""
    classes = model.get("classes")
    for class_name, cls in (classes.items() if isinstance(classes, dict) else ()):
        samples = cls.get("samples") if isinstance(cls, dict) else None
        for i, entry in enumerate(samples if isinstance(samples, list) else ()):
            yield class_name, i, entry


def _check_boxes(key: str, model: dict[str, Any], issues: list[Issue]) -> None:
    """A box's label names one of the model's classes; a detection model has boxes to learn from."""
    classes = model.get("classes")
    names = [c for c in classes if isinstance(c, str)] if isinstance(classes, dict) else []
    any_box = False
    for class_name, i, entry in _samples(model):
        boxes = entry.get("boxes") if isinstance(entry, dict) else None
        for j, box in enumerate(boxes if isinstance(boxes, list) else ()):
            any_box = True
            label = plain_text(box.get("label")) if isinstance(box, dict) else None
            if not isinstance(label, str) or label in names:
                continue
            close = suggest(label, names)
            hint = f"did you mean '{close}'?" if close else "classes: " + ", ".join(names)
            path: SpecPath = ("models", key, "classes", class_name, "samples", i, "boxes", j, "label")
            issues.append(Issue(path, f"box label '{label}' is not a class of model '{key}' ({hint})", at="value"))
    if model.get("purpose") == "detection" and names and not any_box:
        message = (
            "a detection model learns from boxes, but none of its samples has any: give samples "
            "boxes: [{label, x, y, w, h}], or set purpose: classification"
        )
        issues.append(Issue(("models", key), message))


def _check_training(key: str, model: dict[str, Any], issues: list[Issue]) -> None:
    classes = model.get("classes")
    training = _valid(TrainingSpec, model.get("training", {}))
    purpose = model.get("purpose", "classification")
    if purpose != "classification" or training is None or not training.auto:
        return
    if isinstance(classes, dict) and len(classes) == 1:
        message = "needs two classes or more to train; add a class or set training.auto: false"
        issues.append(Issue(("models", key, "classes"), message))


def _check_uids(key: str, model: dict[str, Any], locate: Locate, issues: list[Issue]) -> None:
    """A user uid names one sample of the model; the second use points back at the first."""
    first_use: dict[str, SpecPath] = {}
    for class_name, i, entry in _samples(model):
        uid = plain_text(entry.get("uid")) if isinstance(entry, dict) else None
        if not isinstance(uid, str) or not uid:
            continue
        path: SpecPath = ("models", key, "classes", class_name, "samples", i, "uid")
        first = first_use.setdefault(uid, path)
        if first != path:
            line, col = locate(first)
            message = f"duplicate uid '{uid}': already used at line {line}, col {col} ({format_path(first)})"
            issues.append(Issue(path, message, at="value"))


def _valid(cls: type[BaseModel], raw: Any) -> Any:
    try:
        return cls.model_validate(raw)
    except ValidationError:
        return None
