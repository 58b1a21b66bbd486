"""The spec's schema (format version 1) as pydantic models.

These carry the field-level rules (types, ranges, one-of-path-or-url, uid syntax).
Rules that need the whole spec or positions (provider names, duplicate uids and
titles, which provider fields apply to which type) live in ``checks`` and
``providers``, so they can point at the exact line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from specs.diagnostics import Diagnostic, SpecPath, format_path
from specs.names import has_control, name_problem
from specs.urls import file_url_problem, http_url_problem, is_file_url
from specs.yamlread import Positions, plain_text

ProviderType = Literal["local", "astica", "autogon", "annolab", "scenario"]
ENV_REF_PATTERN = r"^\$\{env:[A-Za-z_][A-Za-z0-9_]*\}$"
UID_PATTERN = re.compile(r"[A-Za-z0-9._:/-]+")
UID_MAX = 128
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# A string field: a plain scalar YAML reads as a number keeps the text the user wrote.
Text = Annotated[str, BeforeValidator(plain_text)]
# A duration: a positive, finite number of seconds.
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _strict(title: str) -> ConfigDict:
    return ConfigDict(extra="forbid", title=title, hide_input_in_errors=True)


def _http_url(value: str | None) -> str | None:
    """A base_url: checked here so that a bad one fails validate, not plan (no network)."""
    if value is None:
        return value
    problem = http_url_problem(value)
    if problem is not None:
        raise PydanticCustomError("http_url", problem)
    return value


def _url_problem(value: str) -> str | None:
    """What is wrong with a sample URL of a supported scheme (None: nothing, or not such a URL)."""
    if is_file_url(value):
        return file_url_problem(value)
    scheme = value.partition(":")[0].lower()
    return http_url_problem(value) if scheme in ("http", "https") else None


class ProviderSpec(BaseModel):
    """Where models are trained: the embedded backend or a vendor's API."""

    model_config = _strict("Provider")

    type: ProviderType = Field(
        description="local (the embedded backend) or a vendor: astica, autogon, annolab, scenario."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Vendors only, and required for them. Must be ${env:NAME}: secrets never live in the file.",
        json_schema_extra={"pattern": ENV_REF_PATTERN},
    )
    base_url: Text | None = Field(
        default=None, description="Vendors only: where the vendor's API is (default: the vendor's own hosts)."
    )
    rate_limit: PositiveInt | None = Field(
        default=None,
        description="Vendors only: requests a minute per endpoint (default: the vendor's documented limit).",
    )
    total_rate_limit: PositiveInt | None = Field(
        default=None,
        description="Vendors only: requests a minute in all, every endpoint together (default: the vendor's "
        "documented total, scaled like rate_limit when that is set: astica's is twice the per-endpoint limit).",
    )
    timeout: Seconds | None = Field(
        default=None,
        description="Vendors only: seconds to wait for an answer before the request counts as lost and is retried "
        "(default: 30 for astica and autogon, 60 for annolab and scenario).",
    )
    max_retries: NonNegativeInt | None = Field(
        default=None,
        description="Vendors only: how many times a request is retried after a 429, a 5xx, a timeout or a dropped "
        "connection (default 5; 0: never).",
    )
    backoff_base: Seconds | None = Field(
        default=None,
        description="Vendors only: seconds of backoff before the first retry, doubled for each retry after it, "
        "with full jitter; a Retry-After answer waits at least that long (default 0.5).",
    )
    send_urls: bool | None = Field(
        default=None,
        description="astica only: true (default) passes http(s) sample URLs for astica to fetch; false makes "
        "modelsync fetch them and upload the bytes.",
    )
    train_timeout: Seconds | None = Field(
        default=None,
        description="autogon only: seconds to wait for a training call, which answers when training is over "
        "(default 3600).",
    )
    path: Text | None = Field(
        default=None, description="local only: the data directory (default .modelsync/local), relative to the spec."
    )
    team_id: Text | None = Field(default=None, description="scenario only: the team to work in.")
    project_id: Text | None = Field(default=None, description="scenario only: the project to work in.")
    group_name: Text | None = Field(default=None, description="annolab only: the group that owns the project.")
    project: Text | None = Field(default=None, description="annolab only: the project holding sources.")
    output_layer: Text | None = Field(default=None, description="annolab only: the layer inference writes to.")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return _http_url(value)


# Which provider fields make sense for which type; any other set field is an error.
COMMON_PROVIDER_FIELDS = frozenset({"type"})
VENDOR_FIELDS = frozenset(
    {"api_key", "base_url", "rate_limit", "total_rate_limit", "timeout", "max_retries", "backoff_base"}
)
PROVIDER_FIELDS: dict[str, frozenset[str]] = {
    "local": COMMON_PROVIDER_FIELDS | {"path"},
    "astica": COMMON_PROVIDER_FIELDS | VENDOR_FIELDS | {"send_urls"},
    "autogon": COMMON_PROVIDER_FIELDS | VENDOR_FIELDS | {"train_timeout"},
    "annolab": COMMON_PROVIDER_FIELDS | VENDOR_FIELDS | {"group_name", "project", "output_layer"},
    "scenario": COMMON_PROVIDER_FIELDS | VENDOR_FIELDS | {"team_id", "project_id"},
}
# Provider types that only run inference on models built and trained in the vendor's own tools:
# a model on one names the vendor's model by its title and declares no classes, samples or training.
INFERENCE_ONLY_PROVIDERS = frozenset({"annolab"})


class BoxSpec(BaseModel):
    """A bounding box on a sample image (detection models)."""

    model_config = _strict("Box")

    label: Text | None = Field(default=None, description="The object's class; defaults to the sample's class.")
    x: float = Field(ge=0, description="Left edge.")
    y: float = Field(ge=0, description="Top edge.")
    w: float = Field(gt=0, description="Width.")
    h: float = Field(gt=0, description="Height.")


def _check_sample_text(value: str) -> str:
    """A sample given as a string: a path, glob, directory or URL."""
    if not value.strip():
        raise PydanticCustomError("empty_sample", "a sample must not be empty")
    m = _URL_SCHEME.match(value)
    if m and m.group(1).lower() not in ("http", "https", "file"):
        raise PydanticCustomError(
            "url_scheme", "unsupported URL scheme '{scheme}' (use http://, https:// or file://)", {"scheme": m.group(1)}
        )
    problem = _url_problem(value) if m else _path_problem(value)
    if problem is not None:
        raise PydanticCustomError("url_syntax" if m else "path_chars", problem)
    return value


def _path_problem(value: str) -> str | None:
    """A local path no file system names (a NUL, a newline): refused here, not by os.stat at plan."""
    return "a sample path must not contain control characters" if has_control(value) else None


class SampleEntry(BaseModel):
    """A sample with details: exactly one of path or url, plus optional uid, caption and boxes."""

    model_config = _strict("Sample")

    path: Text | None = Field(default=None, description="A file, glob or directory, relative to the spec.")
    url: Text | None = Field(default=None, description="An http(s):// or file:// URL.")
    uid: Text | None = Field(
        default=None,
        description=f"Your id for this sample (1-{UID_MAX} of A-Z a-z 0-9 . _ : / -); default: from its content.",
        json_schema_extra={"pattern": r"^[A-Za-z0-9._:/-]{1,128}$"},
    )
    caption: Text | None = Field(default=None, description="Optional text stored with the sample.")
    boxes: list[BoxSpec] = Field(default_factory=list, description="Bounding boxes (detection).")

    @field_validator("uid")
    @classmethod
    def _uid(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value:
            raise PydanticCustomError("uid_empty", "uid must not be empty")
        if len(value) > UID_MAX:
            raise PydanticCustomError(
                "uid_length", "uid is {n} characters long; the limit is {max}", {"n": len(value), "max": UID_MAX}
            )
        if not UID_PATTERN.fullmatch(value):
            raise PydanticCustomError("uid_chars", "uid may contain only letters, digits and . _ : / -")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise PydanticCustomError("empty_sample", "path must not be empty")
        if value is None:
            return value
        problem = file_url_problem(value) if is_file_url(value) else _path_problem(value)
        if problem is not None:
            raise PydanticCustomError("url_syntax" if is_file_url(value) else "path_chars", problem)
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not re.match(r"(?i)(https?|file)://", value):
            raise PydanticCustomError("url", "url must be an http://, https:// or file:// URL")
        problem = _url_problem(value)
        if problem is not None:
            raise PydanticCustomError("url_syntax", problem)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SampleEntry:
        if (self.path is None) == (self.url is None):
            which = "both" if self.path is not None else "neither"
            message = "a sample takes exactly one of path: or url: (this one has {which})"
            raise PydanticCustomError("sample_source", message, {"which": which})
        return self


def _sample_kind(value: Any) -> str:
    return "entry" if isinstance(value, dict | SampleEntry) else "text"


SAMPLE_TAGS = ("text", "entry")
SampleItem = Annotated[
    Annotated[Text, AfterValidator(_check_sample_text), Tag("text")] | Annotated[SampleEntry, Tag("entry")],
    Discriminator(_sample_kind),
]


class ClassSpec(BaseModel):
    """One class (label) of a model and the samples that show it."""

    model_config = _strict("Class")

    samples: list[SampleItem] = Field(
        min_length=1,
        description="Paths, globs, directories or http(s)/file URLs, or mappings with path/url and details.",
    )


def _config_scalar(value: Any) -> Any:
    if value is None or isinstance(value, list | dict):
        raise PydanticCustomError("config_value", "a training setting must be a number, a string or true/false")
    return value


ConfigValue = Annotated[int | float | str | bool, BeforeValidator(_config_scalar)]


class TrainingSpec(BaseModel):
    """When and how to train."""

    model_config = _strict("Training")

    auto: bool = Field(default=True, description="Train when the dataset or config changed since the last version.")
    model_type: Literal["small", "medium", "large"] = Field(default="small", description="The model size.")
    base: Text | None = Field(default=None, description="A model version or saved name to fine-tune from.")
    config: dict[str, ConfigValue] = Field(
        default_factory=dict, description="Trainer settings, e.g. {steps: 300, learning_rate: 0.1}."
    )


class LifecycleSpec(BaseModel):
    """What modelsync may delete."""

    model_config = _strict("Lifecycle")

    prevent_destroy: bool = Field(default=False, description="Make any plan that deletes this model an error.")
    prune: Literal["managed", "all", "none"] = Field(
        default="managed",
        description="managed: remove only samples modelsync uploaded; all: also foreign ones; none: never remove.",
    )


class ModelSpec(BaseModel):
    """A model: its classes and samples, and how to train it."""

    model_config = _strict("Model")

    provider: Text | None = Field(default=None, description="A declared provider; required when there are several.")
    title: Text | None = Field(default=None, min_length=1, description="The remote title; defaults to the key.")
    type: Text = Field(default="vision", description="The model type.")
    purpose: Literal["classification", "detection"] = Field(default="classification")
    tags: list[Text] = Field(default_factory=list)
    classes: dict[str, ClassSpec] = Field(
        default_factory=dict,
        description="Class name -> its samples. Required, with one class or more, except on an inference-only "
        "provider (annolab), whose models are built in the vendor's own tools and declare none.",
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    lifecycle: LifecycleSpec = Field(default_factory=LifecycleSpec)

    @field_validator("title")
    @classmethod
    def _title(cls, value: str | None) -> str | None:
        problem = name_problem("title", value) if value is not None else None
        if problem is not None:
            raise PydanticCustomError("name", problem)
        return value

    def title_or(self, key: str) -> str:
        """The remote title: ``title`` when given, else the model's key."""
        return self.title if self.title is not None else key


def _default_provider() -> dict[str, ProviderSpec]:
    return {"local": ProviderSpec(type="local")}


class Spec(BaseModel):
    """A modelsync spec (modelsync.yaml), format version 1."""

    model_config = ConfigDict(extra="forbid", title="modelsync spec", hide_input_in_errors=True)

    version: Literal[1] = Field(description="The spec format version: 1.")
    providers: dict[str, ProviderSpec] = Field(
        default_factory=dict, description="Where models train. Without any, every model uses the embedded backend."
    )
    models: dict[str, ModelSpec] = Field(description="Model key (its identity in this repo) -> the model.")

    _file: Path | None = PrivateAttr(default=None)
    _shown: str = PrivateAttr(default="modelsync.yaml")
    _positions: Positions | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _default_local(self) -> Spec:
        if not self.providers:
            self.providers = _default_provider()
        return self

    @property
    def path(self) -> Path:
        """The spec file."""
        return self._file if self._file is not None else Path(self._shown)

    @property
    def base_dir(self) -> Path:
        """The spec's directory: relative sample paths start here."""
        return self.path.parent

    def locate(self, path: SpecPath) -> tuple[int, int]:
        """1-based (line, col) of the node at ``path``, or of its nearest existing ancestor."""
        return self._positions.locate(tuple(path)) if self._positions is not None else (0, 0)

    def diagnostic(self, path: SpecPath, message: str, *, at_key: bool = False) -> Diagnostic:
        """A diagnostic at ``path``, for stages after loading (e.g. the resolver's "no such file");
        ``at_key`` points at the mapping key rather than its value (for unknown keys)."""
        if at_key and self._positions is not None:
            line, col = self._positions.locate_key(tuple(path))
        else:
            line, col = self.locate(path)
        return Diagnostic(self._shown, line, col, format_path(tuple(path)), message)

    def provider_for(self, model_key: str) -> tuple[str, ProviderSpec]:
        """The (name, provider) a model uses: its ``provider``, else the only one declared."""
        name = self.models[model_key].provider
        if name is None:
            if len(self.providers) != 1:
                raise KeyError(f"model '{model_key}' names no provider and {len(self.providers)} are declared")
            name = next(iter(self.providers))
        return name, self.providers[name]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, for editors and ``modelsync schema``."""
    schema = Spec.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
