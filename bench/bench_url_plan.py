"""Plans over URL sources: a first plan (every URL fetched) and a no-op plan (every URL
revalidated with If-Modified-Since, answered 304), against a local threaded file server.

    python bench/bench_url_plan.py [--n 1000] [--runs 5]

N distinct URLs (each image of a generated dataset, twice over with a query string) in two
classes, embedded backend, training off. URL-only vendors (Autogon, Scenario) take samples
this way, so a no-op plan's cost per URL is what a team pays on every CI run. Figures:
wall time and CPU time (user + system, of the plan process and its children) per plan,
medians, and CPU per URL.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK, ensure_dataset, fmt_runs, header, median, modelsync_cmd, run_measured  # noqa: E402


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


@contextlib.contextmanager
def file_server(directory: Path):
    """A threaded static file server on a free loopback port (Last-Modified, 304s)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def write_url_spec(root: Path, base: str, files: dict[str, list[str]], n: int) -> None:
    """A spec whose N samples are URLs of ``files`` (class -> relative paths), cycled."""
    lines = ["version: 1", "models:", "  bench:", "    training: {auto: false}", "    classes:"]
    per_class = n // len(files)
    for cls, names in files.items():
        lines += [f"      {cls}:", "        samples:"]
        lines += [f"          - {base}/{names[i % len(names)]}?n={i}" for i in range(per_class)]
    (root / "modelsync.yaml").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="URLs (default 1000)")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    header(f"plans over {args.n:,} URL sources (local file server), embedded backend")
    images = ensure_dataset(max(2, args.n // 2), 2, WORK / f"urls-{args.n}") / "data"
    files = {c.name: sorted(f"{c.name}/{f.name}" for f in c.glob("*.png")) for c in sorted(images.iterdir())}
    root = WORK / f"url-plan-{args.n}"
    first, warm, first_cpu, warm_cpu = [], [], [], []
    with file_server(images) as base:
        for _ in range(args.runs):
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            write_url_spec(root, base, files, args.n)
            cold = run_measured([*modelsync_cmd(), "plan"], cwd=root)
            again = run_measured([*modelsync_cmd(), "plan"], cwd=root)
            first.append(cold.seconds)
            warm.append(again.seconds)
            first_cpu.append(cold.cpu_seconds)
            warm_cpu.append(again.cpu_seconds)
    print(f"first plan (all fetched)   wall: {fmt_runs(first)}; CPU {fmt_runs(first_cpu)}")
    print(f"no-op plan (all 304)       wall: {fmt_runs(warm)}; CPU {fmt_runs(warm_cpu)}")
    print(f"CPU per URL: first {median(first_cpu) / args.n * 1000:.2f} ms, "
          f"no-op {median(warm_cpu) / args.n * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
