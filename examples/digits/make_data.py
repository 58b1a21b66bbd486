"""Write scikit-learn's bundled handwritten digits as PNG files under data/<digit>/NNNN.png.

Run once (needs scikit-learn, which modelsync itself does not use):

    python examples/digits/make_data.py

The 1797 images are 8x8 with 17 grey levels; they are upscaled to 32x32 (bicubic)
and drawn as dark ink on white, the way a scanned digit looks. The output is
deterministic, so re-running it changes no file and no dataset digest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32


def digit_png(pixels: np.ndarray, size: int = SIZE) -> Image.Image:
    """An 8x8 array of 0..16 ink levels as a size x size grayscale image, ink dark on white."""
    ink = np.clip(pixels, 0, 16) / 16.0
    grey = np.round(255.0 * (1.0 - ink)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BICUBIC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args()

    from sklearn.datasets import load_digits  # only this script needs scikit-learn

    digits = load_digits()
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = args.out / str(int(target))
        folder.mkdir(parents=True, exist_ok=True)
        digit_png(pixels, args.size).save(folder / f"{index:04d}.png", optimize=True)
    print(f"wrote {len(digits.images)} images under {args.out}")


if __name__ == "__main__":
    main()
