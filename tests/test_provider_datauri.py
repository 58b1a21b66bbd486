"""The one encoder of image payloads the providers send, against the decoder `modelsync serve`
uses: every image format round-trips with its right media type."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from reconciler.local.images import inspect_image
from reconciler.local.serve.urlfetch import decode_base64, decode_data_uri
from reconciler.providers.datauri import base64_text, data_uri, media_type


def image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 4), (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_data_uri_round_trips_through_serve_with_the_media_type_of_the_bytes(fmt):
    data = image(fmt)
    uri = data_uri(data)
    expected = inspect_image(data, max_bytes=2**20).media_type  # what the embedded backend says it is
    assert media_type(data) == expected and uri.startswith(f"data:{expected};base64,")
    assert decode_data_uri(uri) == data
    assert decode_base64(base64_text(data)) == data


def test_bytes_that_are_no_image_are_an_octet_stream():
    assert data_uri(b"hello") == "data:application/octet-stream;base64,aGVsbG8="
