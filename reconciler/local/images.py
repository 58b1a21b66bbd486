"""Image checks by content: the service stores only images it will be able to train on.

A file's name or declared type means nothing here: the magic bytes pick the format
and Pillow must then open *and decode* it as that format, so a text file renamed
``.png`` or a truncated JPEG is refused at upload, not at training time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from reconciler.local.errors import InvalidInputError, WouldWait
from reconciler.local.magic import NOT_AN_IMAGE, sniff

# media type -> Pillow format name
_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/webp": "WEBP",
}
MAX_PIXELS = 64_000_000  # above this we refuse instead of decoding (decompression bombs)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    media_type: str
    width: int
    height: int


def check_header(data: bytes, *, max_bytes: int, what: str = "image") -> str:
    """The cheap part of the check (size limit, magic bytes); returns the media type.

    Enough for inference inputs, which the predictor decodes anyway: a damaged image
    then fails there, while stored samples get the full ``inspect_image``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInputError(f"{what}: expected bytes, got {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise InvalidInputError(f"{what}: empty file, {NOT_AN_IMAGE}")
    if size > max_bytes:
        raise InvalidInputError(f"{what}: {size:,} bytes is over the limit of {max_bytes:,} bytes")
    media_type = sniff(bytes(data[:32]))
    if media_type is None:
        raise InvalidInputError(f"{what}: {NOT_AN_IMAGE}")
    return media_type


def inspect_image(
    data: bytes, *, max_bytes: int, what: str = "image", decode_now_max: int | None = None
) -> ImageInfo:
    """Type and size of an image that fully decodes, or InvalidInputError naming ``what``.

    ``decode_now_max``: raise WouldWait instead of decoding more pixels than that (a caller
    that must not block long, such as serve's event loop, passes its budget)."""
    media_type = check_header(data, max_bytes=max_bytes, what=what)
    expected = _FORMATS[media_type]
    try:
        # (no warnings.catch_warnings here: it is not thread-safe; our own pixel limit,
        # checked before decoding, is below Pillow's decompression-bomb threshold)
        with Image.open(io.BytesIO(data), formats=[expected]) as img:
            width, height = img.size
            if width <= 0 or height <= 0:
                raise InvalidInputError(f"{what}: image has no pixels ({width}x{height})")
            if width * height > MAX_PIXELS:
                raise InvalidInputError(f"{what}: {width}x{height} pixels is over the limit of {MAX_PIXELS:,}")
            if decode_now_max is not None and width * height > decode_now_max:
                raise WouldWait(f"{what}: {width}x{height} pixels to decode")
            img.verify()
        # verify() checks structure (PNG CRCs) but not that the pixels decode: do that too.
        with Image.open(io.BytesIO(data), formats=[expected]) as img:
            img.load()
    except (InvalidInputError, WouldWait):
        raise
    except Image.DecompressionBombError:
        raise InvalidInputError(f"{what}: too many pixels to decode safely") from None
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InvalidInputError(f"{what}: {NOT_AN_IMAGE}: damaged {expected} data ({detail})") from None
    return ImageInfo(media_type, int(width), int(height))
