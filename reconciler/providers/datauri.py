"""Image bytes as the vendors' JSON bodies carry them: raw base64, or a ``data:`` URI whose
media type is read from the bytes' magic numbers (never from a file name).

The one place that builds these for every provider; `modelsync serve` decodes them in
``reconciler.local.serve.urlfetch`` (the embedded backend imports nothing from here).
"""

from __future__ import annotations

import base64

OCTET_STREAM = "application/octet-stream"


def media_type(data: bytes) -> str:
    """The image type announced by the magic bytes (PNG, JPEG, GIF, BMP, WebP), else application/octet-stream."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"GIF8"):
        return "image/gif"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return OCTET_STREAM


def base64_text(data: bytes) -> str:
    """Standard base64 as ASCII text, no ``data:`` prefix (astica's upload ``input``)."""
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes) -> str:
    """``data:<media type>;base64,<data>`` (astica's /detect, Autogon's and AnnoLab's image fields)."""
    return f"data:{media_type(data)};base64,{base64_text(data)}"
