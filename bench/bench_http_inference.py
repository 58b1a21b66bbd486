"""Local inference over HTTP: images a second through `modelsync serve`'s astica /detect.

    python bench/bench_http_inference.py [--requests 600] [--clients 8] [--runs 3]

Setup (once, cached under bench/.work): the quickstart (48 images of 64x64, two classes) is
applied and trained through the embedded backend straight into a serve data directory.
Each run: --clients threads, each with its own keep-alive connection, send --requests
documented /detect calls in all (base64 PNG input, one image a call, as astica's API takes
it) and the wall time gives images a second; every answer is checked against the image's
true class. The server (a real `modelsync serve` app, no rate limit) shares the 2 cores
with the clients. Target (DESIGN.md): at least 144 images/s on 2 cores.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, fmt_runs, header, modelsync_cmd, run_measured, serve  # noqa: E402

KEY = "bench-key-infer"
OWNER = "local"  # the embedded provider's owner: serve shows the key what the setup applied


def setup(root: Path) -> None:
    """Copy the quickstart, point it at serve's data directory and apply (trains) once."""
    marker = root / ".applied"
    if marker.exists():
        return
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(REPO / "examples" / "quickstart", root, ignore=shutil.ignore_patterns(".modelsync", "*.lock"))
    spec = root / "modelsync.yaml"
    spec.write_text(
        "providers:\n  bench:\n    type: local\n    path: serve/service\n"
        + spec.read_text().replace("  shapes:\n", "  shapes:\n    provider: bench\n", 1)
    )
    t0 = time.perf_counter()
    run_measured([*modelsync_cmd(), "apply", "--auto-approve"], cwd=root)
    print(f"setup: quickstart applied and trained through the embedded backend in {time.perf_counter() - t0:.1f} s")
    marker.touch()


def inputs(root: Path) -> list[tuple[str, str]]:
    """(true class, base64 PNG) for every quickstart image, the unseen ones included."""
    out = []
    for path in sorted(root.glob("data/*/*.png")) + sorted(root.glob("unseen/*.png")):
        truth = path.parent.name if path.parent.name != "unseen" else path.name.split("-")[0]
        out.append((truth, base64.b64encode(path.read_bytes()).decode()))
    return out


def one_run(base_url: str, model_id: str, images: list[tuple[str, str]], n: int, clients: int) -> tuple[float, int]:
    """Send n /detect calls from ``clients`` threads; (seconds, wrong answers)."""
    import httpx

    counter = iter(range(n))
    lock = threading.Lock()
    wrong = [0]
    errors: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                truth, b64 = images[i % len(images)]
                r = client.post("/detect", json={"tkn": KEY, "model_id": model_id, "input": b64})
                body = r.json()
                if r.status_code != 200 or body.get("status") != "OK":
                    errors.append(f"{r.status_code} {body}")
                    return
                if body["output"] != truth:
                    with lock:
                        wrong[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"/detect failed: {errors[0]}")
    return seconds, wrong[0]


def main(argv: list[str] | None = None) -> int:
    import httpx

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    header(f"local inference over HTTP: {args.requests} astica /detect calls from {args.clients} clients")
    root = WORK / "http-infer"
    setup(root)
    images = inputs(root)
    with serve(root / "serve", key=KEY, rate_limit=None, total_rate_limit=None, owner=OWNER,
               service_dir=root / "serve" / "service") as srv:
        models = httpx.post(srv.base_url + "/model/list", json={"tkn": KEY}, timeout=30).json()
        (model_id,) = [str(m["id"]) for m in models["dataset_list"]]
        one_run(srv.base_url, model_id, images, 2 * args.clients, args.clients)  # warm: weights loaded, pools up
        rates, walls, wrong = [], [], 0
        for i in range(args.runs):
            seconds, w = one_run(srv.base_url, model_id, images, args.requests, args.clients)
            walls.append(seconds)
            rates.append(args.requests / seconds)
            wrong += w
            print(f"run {i + 1}: {args.requests} images in {seconds:.2f} s = {rates[-1]:.0f} images/s, {w} wrong")
    rate = statistics.median(rates)
    print(f"wall: {fmt_runs(walls, digits=2)}")
    print(f"images/s: median {rate:.0f} (target 144: {'met' if rate >= 144 else 'NOT met'}); "
          f"wrong answers in all runs: {wrong} of {args.requests * args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
