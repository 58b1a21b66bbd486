"""The trainer's exceptions: the service maps them to its own error codes."""

from __future__ import annotations


class TrainingError(ValueError):
    """Training cannot start or finish with this input (bad config value, too few classes, no boxes)."""


class TrainingCanceled(Exception):  # noqa: N818 - the contract's name
    """The progress callback returned False: the run stopped and produced no weights."""


class InvalidImage(ValueError):  # noqa: N818 - the contract's name
    """Bytes that Pillow cannot decode as an image (or an image too large to decode safely)."""


class InvalidWeights(ValueError):  # noqa: N818 - mirrors InvalidImage
    """Bytes that are not weights this trainer wrote (or from an incompatible format version)."""
