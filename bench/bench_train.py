"""Benchmark the embedded trainer: digits training time/accuracy and in-process prediction rate.

    python bench/bench_train.py [--repeats 3] [--runs 5] [--all-cores]

Prints figures; it does not pass or fail. Target (DESIGN.md / trainer brief): in-process
prediction of small images >= 1,000 images/s on one core. By default the process is pinned
to one CPU and OpenBLAS to one thread (set before numpy loads) so "one core" is literal.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="digits trainings (median reported)")
    parser.add_argument("--runs", type=int, default=5, help="prediction runs (median reported)")
    parser.add_argument("--images", type=int, default=1000, help="images per prediction run")
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one CPU / one BLAS thread")
    return parser.parse_args()


ARGS = parse_args()
if not ARGS.all_cores:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # must precede the numpy import below
    os.environ["OMP_NUM_THREADS"] = "1"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import numpy as np  # noqa: E402
from ruamel.yaml import YAML  # noqa: E402

sys.path.insert(0, str(REPO))
from reconciler.local.trainer import TrainSample, load_predictor, train  # noqa: E402

DIGITS = REPO / "examples" / "digits"


def digits_samples() -> tuple[list[TrainSample], dict]:
    spec = YAML(typ="safe").load((DIGITS / "modelsync.yaml").read_text())
    model = spec["models"]["digits"]
    samples = [
        TrainSample(label, path.read_bytes())
        for label in model["classes"]
        for path in sorted((DIGITS / "data" / label).glob("*.png"))
    ]
    return samples, model["training"]


def main() -> None:
    print("command:", " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: nproc={os.cpu_count()}, cpus used by this run={cpus}, {platform.machine()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    samples, training = digits_samples()
    config, model_type = training["config"], training["model_type"]
    print(f"\ndigits: {len(samples)} images, model_type={model_type}, config={config}")
    seconds, result = [], None
    for _ in range(ARGS.repeats):
        start = time.perf_counter()
        result = train(samples, model_type=model_type, config=config)
        seconds.append(time.perf_counter() - start)
    assert result is not None
    m = result.metrics
    print(f"  train seconds: median {statistics.median(seconds):.3f} of {ARGS.repeats} "
          f"(runs: {', '.join(f'{s:.3f}' for s in seconds)})")
    print(f"  held-out accuracy: {m['accuracy']:.4f} on {m['num_holdout']} images "
          f"(trained on {m['num_train']}), final loss {m['final_loss']:.4f}")

    predictor = load_predictor(result.weights)
    images = [s.data for s in samples][: ARGS.images]
    print(f"\nprediction, in-process, {len(images)} small images (32x32 PNG, decoded + featurised + scored):")
    for batch in (1, 64):
        rates = []
        for _ in range(ARGS.runs):
            start = time.perf_counter()
            for i in range(0, len(images), batch):
                predictor.predict(images[i : i + batch])
            rates.append(len(images) / (time.perf_counter() - start))
        print(f"  batch {batch:>3}: median {statistics.median(rates):,.0f} images/s over {ARGS.runs} runs "
              f"(min {min(rates):,.0f}, max {max(rates):,.0f})  target >= 1,000")


if __name__ == "__main__":
    main()
