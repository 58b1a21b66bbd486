"""Image decoding and fixed-length feature vectors, all vectorised over a batch.

An image becomes: its grey pixels at the model type's resolution, its colour pixels
pooled 2x2, per-channel mean/std, a 4x4x4 colour histogram, and a histogram of
oriented gradients (HOG: 9 unsigned orientation bins on 4-pixel cells, 2x2-cell
blocks, L2-Hys normalised). Pixels and colours let the classifier tell colours and
layouts apart; HOG makes it see shapes and edges regardless of their colour.

Features are standardised with a mean and scale computed on the training split
and stored with the weights. The scale also divides by sqrt(dim), so a feature
vector has unit norm on average: that bounds the loss curvature, which makes
one learning rate mean the same thing for every model type.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from reconciler.local.trainer.errors import InvalidImage

RESOLUTION = {"small": 16, "medium": 24, "large": 32}
FEATURE_VERSION = 1
MAX_PIXELS = 64_000_000  # refuse decompression bombs well before they exhaust memory
HOG_BINS = 9
HOG_CELL = 4
HIST_BINS = 4
_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_ROTATING_FORMATS = {"JPEG", "MPO", "WEBP", "TIFF"}
STD_FLOOR = 1e-2  # a feature that barely varies in training must not explode on new images


def decode_image(data: bytes, *, draft: int | None = None) -> Image.Image:
    """Decode bytes into an RGB image (EXIF-rotated, transparency over white).

    ``draft`` lets JPEG decode at a reduced scale when only a small image is
    needed (classification); detection decodes at full size so boxes keep their pixels.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidImage(f"expected image bytes, got {type(data).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise InvalidImage(f"image too large to decode: {img.width}x{img.height} pixels")
            if draft and img.format == "JPEG":
                img.draft("RGB", (draft, draft))
            img.load()
            if img.format in _ROTATING_FORMATS:
                img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except InvalidImage:
        raise
    except Exception as exc:  # Pillow raises many types on corrupt input; all mean "not an image"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidImage(f"not a decodable image ({reason})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def resize_pixels(img: Image.Image, size: int) -> np.ndarray:
    """The image squeezed to size x size, as an (size, size, 3) uint8 array."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def image_pixels(data: bytes, size: int) -> np.ndarray:
    """Bytes straight to the (size, size, 3) uint8 array the features are computed from."""
    return resize_pixels(decode_image(data, draft=2 * size), size)


def feature_dim(size: int) -> int:
    """Length of the feature vector for a resolution (checked against weights on load)."""
    cells = size // HOG_CELL
    half = size // 2
    return size * size + half * half * 3 + 6 + HIST_BINS**3 + (cells - 1) ** 2 * 4 * HOG_BINS


def feature_blocks(size: int) -> tuple[int, ...]:
    """Lengths of the feature vector's parts, in order: grey pixels, pooled colour pixels,
    colour mean/std, colour histogram, HOG. They sum to ``feature_dim(size)``."""
    cells = size // HOG_CELL
    half = size // 2
    return (size * size, half * half * 3, 6, HIST_BINS**3, (cells - 1) ** 2 * 4 * HOG_BINS)


def features(pixels: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 pixels -> (N, D) float32 raw (unstandardised) features."""
    if pixels.ndim != 4 or pixels.shape[1] != pixels.shape[2] or pixels.shape[3] != 3:
        raise ValueError(f"expected (N, S, S, 3) pixels, got shape {pixels.shape}")
    n, size = pixels.shape[0], pixels.shape[1]
    rgb = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
    grey = rgb @ _GREY
    half = size // 2
    e = 2 * half
    pooled = rgb[:, 0:e:2, 0:e:2] + rgb[:, 1:e:2, 0:e:2] + rgb[:, 0:e:2, 1:e:2] + rgb[:, 1:e:2, 1:e:2]
    pooled *= np.float32(0.25)
    flat = rgb.reshape(n, -1, 3)
    ones = np.full(flat.shape[1], 1.0 / flat.shape[1], dtype=np.float32)
    mean = ones @ flat  # matmul: a strided mean over the pixel axis is 10x slower
    std = np.sqrt(np.maximum(ones @ (flat * flat) - mean * mean, 0.0))
    stats = np.concatenate([mean, std], axis=1)
    parts = [
        grey.reshape(n, -1),
        pooled.reshape(n, -1),
        stats,
        colour_histogram(pixels),
        hog(grey),
    ]
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def colour_histogram(pixels: np.ndarray) -> np.ndarray:
    """Joint RGB histogram with HIST_BINS levels per channel, as fractions of the pixels."""
    n = pixels.shape[0]
    q = (pixels >> (8 - int(math.log2(HIST_BINS)))).astype(np.int64)
    bins = HIST_BINS**3
    idx = (q[..., 0] * HIST_BINS + q[..., 1]) * HIST_BINS + q[..., 2]
    idx = idx.reshape(n, -1) + (np.arange(n, dtype=np.int64) * bins)[:, None]
    counts = np.bincount(idx.ravel(), minlength=n * bins).reshape(n, bins)
    return (counts / idx.shape[1]).astype(np.float32)


def hog(grey: np.ndarray) -> np.ndarray:
    """Histogram of oriented gradients of (N, S, S) grey images -> (N, blocks * 36)."""
    n, size = grey.shape[0], grey.shape[1]
    cells = size // HOG_CELL
    padded = np.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]
    gy = padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]
    mag = np.sqrt(gx * gx + gy * gy)
    angle = np.arctan2(gy, gx)
    angle += np.float32(np.pi) * (angle < 0)  # unsigned: dark-on-light and light-on-dark edges alike
    pos = angle * np.float32(HOG_BINS / np.pi) - np.float32(0.5)  # soft-assign between two bin centres
    low_f = np.floor(pos)
    frac = pos - low_f
    low = low_f.astype(np.int32)
    low[low < 0] = HOG_BINS - 1
    high = low + 1
    high[high == HOG_BINS] = 0
    rows = np.minimum(np.arange(size) // HOG_CELL, cells - 1)
    cell_of = rows[:, None] * cells + rows[None, :]
    base = ((np.arange(n, dtype=np.int64)[:, None, None] * (cells * cells) + cell_of[None]) * HOG_BINS)
    total = n * cells * cells * HOG_BINS
    w_high = (mag * frac).ravel()
    w_low = mag.ravel() - w_high
    hist = np.bincount((base + low).ravel(), weights=w_low, minlength=total)
    hist += np.bincount((base + high).ravel(), weights=w_high, minlength=total)
    hist = hist.reshape(n, cells, cells, HOG_BINS)
    blocks = np.concatenate(
        [hist[:, :-1, :-1], hist[:, :-1, 1:], hist[:, 1:, :-1], hist[:, 1:, 1:]], axis=3
    )  # (n, cells-1, cells-1, 4*bins): each 2x2 block of cells
    blocks = _l2_hys(blocks)
    return blocks.reshape(n, -1).astype(np.float32)


def _l2_hys(blocks: np.ndarray, clip: float = 0.2, eps: float = 1e-3) -> np.ndarray:
    norm = np.sqrt((blocks * blocks).sum(axis=-1, keepdims=True) + eps * eps)
    clipped = np.minimum(blocks / norm, clip)
    norm = np.sqrt((clipped * clipped).sum(axis=-1, keepdims=True) + eps * eps)
    return clipped / norm


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and scale from the training split; stored with the weights."""

    mean: np.ndarray  # (D,) float32
    scale: np.ndarray  # (D,) float32: std floored, times sqrt(D)

    @classmethod
    def fit(cls, raw: np.ndarray) -> Standardizer:
        x = raw.astype(np.float64)
        mean = x.mean(axis=0)
        std = np.maximum(x.std(axis=0), STD_FLOOR)
        scale = std * math.sqrt(raw.shape[1])
        return cls(mean.astype(np.float32), scale.astype(np.float32))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return (raw - self.mean) / self.scale


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) as decode_image will see them, read from the header without decoding pixels."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if img.format in _ROTATING_FORMATS and img.getexif().get(0x0112) in (5, 6, 7, 8):
            width, height = height, width
        return width, height
    except Exception as exc:  # same policy as decode_image
        raise InvalidImage(f"not a decodable image ({type(exc).__name__})") from None
