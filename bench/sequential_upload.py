"""A vendor sample script's way to upload a dataset: one request after the other.

    python bench/sequential_upload.py BASE_URL KEY DATA_DIR

What astica's sample code does, as a script a user would run: create the model, list to
find its id, then one POST /model/upload per image (base64 input, uid), in order.
bench_apply_latency.py times it as a process, as it times `modelsync apply`.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import httpx


def main(base_url: str, key: str, data_dir: str) -> int:
    files = sorted(Path(data_dir).glob("*/*.png"))
    with httpx.Client(base_url=base_url, timeout=60) as c:
        c.post("/model/create", json={"tkn": key, "dataset_title": "sequential", "dataset_type": "vision",
                                      "dataset_purpose": "classification"}).raise_for_status()
        listing = c.post("/model/list", json={"tkn": key}).json()
        model_id = next(m["id"] for m in listing["dataset_list"] if m["title"] == "sequential")
        for f in files:
            body = {"tkn": key, "model_id": model_id, "model_class": f.parent.name,
                    "input": base64.b64encode(f.read_bytes()).decode(), "uid": f.stem}
            answer = c.post("/model/upload", json=body).json()
            if answer.get("status") != "OK":
                print(f"sequential upload failed: {answer}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1].strip())
    sys.exit(main(*sys.argv[1:]))
