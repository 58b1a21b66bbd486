"""The contract every provider implements: the local backend and each vendor.

The reconciler only ever talks to this interface. A provider translates it into its
backend's calls and declares, through ``capabilities``, what it can do; asking it
for anything else raises ``NotSupported`` and is caught at validate time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from reconciler.model import (
    ImageInput,
    InferenceStatus,
    ModelSummary,
    Prediction,
    RemoteModel,
    RemoteSample,
    TrainingStatus,
    TrainRequest,
    UploadItem,
    VersionInfo,
)

# What a provider may declare it can do.
CAP_MODELS = "models"  # create, list, view and delete models
CAP_CLASSES = "classes"  # more than one class per model
CAP_DELETE_CLASS = "delete_class"
CAP_UPLOAD_BYTES = "upload_bytes"  # samples may come from local files
CAP_UPLOAD_URLS = "upload_urls"  # samples may be http(s) URLs the vendor fetches
CAP_DELETE_SAMPLE = "delete_sample"
CAP_CAPTIONS = "captions"
CAP_BOXES = "boxes"
CAP_CONFIGURE = "configure"  # training.config is sent to the vendor
CAP_TRAIN = "train"
CAP_MODEL_TYPE = "model_type"  # training.model_type small/medium/large
CAP_TRAIN_BASE = "train_base"  # training.base: fine-tune from a version or saved name
CAP_STOP = "stop_training"
CAP_VERSIONS = "versions"  # the vendor lists versions itself
CAP_PREDICT = "predict"
CAP_INFER = "infer"  # asynchronous batch inference
CAP_SAMPLE_UIDS = "sample_uids"  # the vendor stores each sample's uid (else only the state links them)


class ProviderError(Exception):
    """A provider call failed. The message is one line naming the operation and the
    vendor's own error text; it never contains the API key."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class NotSupported(ProviderError):
    """The provider cannot do this at all (a capability it does not declare)."""


class NotFound(ProviderError):
    """The remote object does not exist (any more)."""


@dataclass(frozen=True)
class ProviderConfig:
    """A provider as the spec configures it, secrets already taken from the environment."""

    name: str
    type: str
    api_key: str | None = None
    base_url: str | None = None
    rate_limit: int | None = None  # requests a minute per endpoint
    path: str | None = None  # local backend data directory
    options: dict[str, Any] = field(default_factory=dict)  # vendor-specific (team_id, project_id, ...)
    workdir: Path = Path(".")  # the directory of the spec file


@dataclass
class CallStats:
    """What a provider did over the network, for reports and benchmarks."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0  # 429 answers received
    by_endpoint: dict[str, int] = field(default_factory=dict)


class Provider(ABC):
    """One training service. Methods are called from worker threads and must be thread-safe."""

    type: ClassVar[str]
    capabilities: ClassVar[frozenset[str]]
    # Requests a minute per endpoint, and in all, when the spec sets no rate_limit (None: unlimited).
    default_rate_limit: ClassVar[int | None] = None
    default_total_rate_limit: ClassVar[int | None] = None
    # False when batch inference jobs run inside this process (the embedded backend): they end with it.
    jobs_outlive_the_process: ClassVar[bool] = True
    # True when reading the remote sends nothing off the machine and creates nothing (the embedded
    # backend): a plan may then read it while the sources are still being resolved, and a spec
    # whose sources do not resolve has still sent nothing. Vendors are read after resolving.
    reads_locally: ClassVar[bool] = False

    def __init__(self, config: ProviderConfig):
        self.config = config
        self.stats = CallStats()

    def rate_limits(self) -> tuple[int | None, int | None]:
        """(per endpoint, in all): requests a minute to pace at (None: unlimited).

        The spec's ``rate_limit`` and ``total_rate_limit`` when set, else the vendor's documented
        limits. A ``rate_limit`` alone scales the documented total by the same factor, keeping
        the vendor's ratio (astica documents 90 and 180: ``rate_limit: 600`` paces the total at
        1200), so raising the per-endpoint limit for a test server is not capped by the default total.
        """
        per_endpoint = self.config.rate_limit or self.default_rate_limit
        total = (self.config.options or {}).get("total_rate_limit")
        if total is None:
            total = self.default_total_rate_limit
            if total is not None and self.config.rate_limit and self.default_rate_limit:
                total = max(1, round(total * self.config.rate_limit / self.default_rate_limit))
        return per_endpoint, int(total) if total else None

    @classmethod
    def training_config_errors(cls, config: dict[str, Any]) -> list[tuple[str | None, str]]:
        """What in ``training.config`` this provider's trainer would refuse, as (key, message);
        checked at validate so a bad value fails before anything is sent, not after the uploads."""
        return []

    # -- lifecycle ---------------------------------------------------------------
    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called once when the command ends."""

    # -- models ------------------------------------------------------------------
    @abstractmethod
    def list_models(self) -> list[ModelSummary]:
        """All models visible to this key: one request."""

    @abstractmethod
    def view_model(self, remote_id: str) -> RemoteModel:
        """One model with its classes, samples and versions: one request where the API allows."""

    @abstractmethod
    def create_model(self, title: str, type: str, purpose: str, tags: tuple[str, ...]) -> str:
        """Create a model; return its remote id (vendors that answer no id are listed to find it)."""

    @abstractmethod
    def delete_model(self, remote_id: str) -> None: ...

    # -- samples and classes -------------------------------------------------------
    @abstractmethod
    def upload_sample(self, remote_id: str, item: UploadItem) -> str | None:
        """Upload one sample into ``item.class_name`` (created if missing); return its remote id
        when the vendor answers one. Must not create a duplicate if the uid already landed."""

    @abstractmethod
    def delete_sample(self, remote_id: str, sample: RemoteSample) -> None: ...

    def delete_class(self, remote_id: str, class_name: str, class_id: str) -> None:
        raise NotSupported(f"{self.type}: removing a class is not supported")

    def update_sample(self, remote_id: str, sample: RemoteSample, caption: str | None, boxes: tuple) -> None:
        raise NotSupported(f"{self.type}: updating a sample's caption or boxes is not supported")

    # -- training ----------------------------------------------------------------
    def configure(self, remote_id: str, config: dict[str, Any]) -> None:
        raise NotSupported(f"{self.type}: configuring training is not supported")

    def start_training(self, remote_id: str, request: TrainRequest) -> str:
        """Start a training run; return a handle for ``training_status``."""
        raise NotSupported(f"{self.type}: training is not supported")

    def training_status(self, remote_id: str, handle: str) -> TrainingStatus:
        raise NotSupported(f"{self.type}: training is not supported")

    def stop_training(self, remote_id: str, handle: str | None) -> None:
        raise NotSupported(f"{self.type}: stopping a training is not supported")

    def list_versions(self, remote_id: str) -> list[VersionInfo]:
        """Trained versions, newest first. Vendors without a version list return what
        ``view_model`` knows; the reconciler's state fills in the digests."""
        return []

    # -- inference ---------------------------------------------------------------
    def predict(
        self,
        remote_id: str,
        version: str | None,
        images: list[ImageInput],
        *,
        confidence_thresh: float | None = None,
        overlap_thresh: float | None = None,
    ) -> list[Prediction]:
        raise NotSupported(f"{self.type}: prediction is not supported")

    def start_inference(self, remote_id: str, version: str | None, images: list[ImageInput]) -> str:
        raise NotSupported(f"{self.type}: batch inference is not supported")

    def inference_status(self, job_id: str) -> InferenceStatus:
        raise NotSupported(f"{self.type}: batch inference is not supported")


ProgressCallback = Callable[[str], None]
