"""The declaration language: modelsync.yaml's schema, loading with positions, and its JSON Schema."""

from specs.diagnostics import Diagnostic, SpecError, format_path
from specs.loader import load_spec
from specs.models import (
    BoxSpec,
    ClassSpec,
    LifecycleSpec,
    ModelSpec,
    ProviderSpec,
    SampleEntry,
    Spec,
    TrainingSpec,
    json_schema,
)

__all__ = [
    "BoxSpec",
    "ClassSpec",
    "Diagnostic",
    "LifecycleSpec",
    "ModelSpec",
    "ProviderSpec",
    "SampleEntry",
    "Spec",
    "SpecError",
    "TrainingSpec",
    "format_path",
    "json_schema",
    "load_spec",
]
