"""Apply against a rate-limited server: achieved request rate over the allowed one, and 429s.

    python bench/bench_apply_rate.py [--n 600] [--rate-limit 600] [--server-total N] [--runs 3]

`modelsync serve` (bench/counting_serve.py: the real app plus a server-side request log)
limits each endpoint to R requests a minute (and N in all, default 2R: astica's ratio).
A spec with an astica provider (base_url on loopback, rate_limit: R) declares N images;
`modelsync apply --parallelism 10` uploads them. From the server's log: the upload rate
achieved between the first and the last upload, over R, and every 429 the server sent.
Targets (DESIGN.md): >= 95% of the allowed rate, no 429.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    WORK,
    astica_env,
    ensure_dataset,
    fmt_runs,
    header,
    median,
    modelsync_cmd,
    provider_line,
    run_measured,
    serve,
    set_base_url,
)

KEY = "bench-key-rate"


def one_run(root: Path, rate: int, server_total: int, parallelism: int) -> dict:
    shutil.rmtree(root / ".modelsync", ignore_errors=True)
    data = WORK / "serve-rate"
    shutil.rmtree(data, ignore_errors=True)
    with serve(data, key=KEY, rate_limit=rate, total_rate_limit=server_total) as srv:
        set_base_url(root, srv.base_url)
        t0 = time.perf_counter()
        cmd = [*modelsync_cmd(), "apply", "--auto-approve", "--parallelism", str(parallelism)]
        r = run_measured(cmd, cwd=root, env=astica_env(KEY))
        wall = time.perf_counter() - t0
        log = srv.requests()
    uploads = sorted(t for t, _, path, status in log if path == "/model/upload" and status == 200)
    throttled = sum(1 for *_, status in log if status == 429)
    span = uploads[-1] - uploads[0] if len(uploads) > 1 else float("nan")
    achieved = (len(uploads) - 1) / span * 60 if len(uploads) > 1 else 0.0
    return {
        "wall": wall,
        "uploads": len(uploads),
        "requests": len(log),
        "throttled": throttled,
        "achieved": achieved,
        "client": provider_line(r.stdout),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=600, help="images to upload (default 600)")
    p.add_argument("--rate-limit", type=int, default=600, help="requests a minute per endpoint (default 600)")
    p.add_argument("--server-total", type=int, default=None, help="server's limit in all (default 2x)")
    p.add_argument("--parallelism", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    total = args.server_total or 2 * args.rate_limit
    header(
        f"apply rate: {args.n} uploads, server limit {args.rate_limit}/min per endpoint and {total}/min in all, "
        f"parallelism {args.parallelism}"
    )
    root = ensure_dataset(
        args.n, 2, WORK / f"rate-{args.n}-{args.rate_limit}", "--provider", "astica",
        "--base-url", "http://127.0.0.1:1", "--rate-limit", str(args.rate_limit),
    )
    runs = []
    for i in range(args.runs):
        res = one_run(root, args.rate_limit, total, args.parallelism)
        runs.append(res)
        print(
            f"run {i + 1}: {res['uploads']} uploads in {res['wall']:.1f} s, {res['achieved']:.1f} uploads/min "
            f"between first and last, {res['requests']} requests, {res['throttled']} answered 429; "
            f"client: {res['client']}"
        )
    allowed = min(args.rate_limit, total)
    ratios = [r["achieved"] / allowed for r in runs]
    print(f"achieved/allowed: {fmt_runs([x * 100 for x in ratios], '%', 1)}")
    worst = max(r["throttled"] for r in runs)
    ok = median(ratios) >= 0.95
    print(f"target >= 95%: {'met' if ok else 'NOT met'}; 429s sent by the server: max {worst} per run "
          f"(target 0: {'met' if worst == 0 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
