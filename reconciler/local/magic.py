"""Which image formats a file's first bytes announce: the one list of accepted formats.

Kept apart from images.py (which needs Pillow) so that plan's hashing can refuse a
non-image from the chunk it reads anyway, without importing Pillow.
"""

from __future__ import annotations

NOT_AN_IMAGE = "not an image (PNG, JPEG, GIF, BMP or WebP)"
_BMP_MIN = 26  # a BMP header is at least this long


def sniff(data: bytes) -> str | None:
    """The media type the magic bytes announce, or None."""
    head = data[:32]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"BM") and len(data) >= _BMP_MIN:
        return "image/bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None
