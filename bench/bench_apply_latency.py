"""Apply against a slow (20 ms) server: modelsync at parallelism 10 vs a sequential client.

    python bench/bench_apply_latency.py [--n 1000] [--latency 0.02] [--parallelism 10] [--runs 3]

`modelsync serve` (bench/counting_serve.py) adds 20 ms to every request and limits
nothing. The same N images are uploaded (a) by `modelsync apply` through the astica
provider (spec rate_limit set far above what is reached, so pacing does not bind) and
(b) by bench/sequential_upload.py, a plain sequential httpx script doing what astica's
sample code does: create the model, list to find its id, then one POST /model/upload per
image (base64 input, uid). Both run as processes, as a user runs them.
Figures: whole-task wall time (process start to exit: modelsync's includes its hashing,
plan and refresh) and the upload phase alone (first to last upload, from the server's log).
Target (DESIGN.md): >= 8x the sequential client.

For scale, each run also times bench/floor_upload.py: the same uploads at the same
parallelism from a client with next to no CPU cost (raw sockets, asyncio). What it takes
is what serve allows on this machine, the floor under any client's upload phase.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR,
    WORK,
    astica_env,
    fmt_runs,
    good_upload_times,
    header,
    median,
    modelsync_cmd,
    provider_line,
    run_measured,
    serve,
    set_base_url,
    upload_dataset,
)

KEY = "bench-key-latency"


def upload_span(log: list) -> float:
    times = good_upload_times(log)
    return times[-1] - times[0] if len(times) > 1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="images (default 1000)")
    p.add_argument("--latency", type=float, default=0.02, help="seconds added per request (default 0.02)")
    p.add_argument("--parallelism", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    header(f"apply vs latency: {args.n} uploads, +{args.latency * 1000:.0f} ms a request, no server limit, "
           f"parallelism {args.parallelism} vs sequential")
    root = upload_dataset(args.n)
    ms_wall, ms_span, seq_wall, seq_span, floor_wall, floor_span = [], [], [], [], [], []
    for i in range(args.runs):
        data = WORK / "serve-latency"
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(root / ".modelsync", ignore_errors=True)
        with serve(data, key=KEY, rate_limit=None, total_rate_limit=None, latency=args.latency) as srv:
            set_base_url(root, srv.base_url)
            cmd = [*modelsync_cmd(), "apply", "--auto-approve", "--parallelism", str(args.parallelism)]
            r = run_measured(cmd, cwd=root, env=astica_env(KEY))
            ms_wall.append(r.seconds)
            ms_span.append(upload_span(srv.requests()))
            srv.reset()
            floor = run_measured([sys.executable, str(BENCH_DIR / "floor_upload.py"), srv.base_url, KEY,
                                  str(root / "data"), "--parallelism", str(args.parallelism)], cwd=root)
            floor_wall.append(floor.seconds)
            floor_span.append(upload_span(srv.requests()))
            srv.reset()
            seq = run_measured([sys.executable, str(BENCH_DIR / "sequential_upload.py"), srv.base_url, KEY,
                                str(root / "data")], cwd=root)
            seq_wall.append(seq.seconds)
            seq_span.append(upload_span(srv.requests()))
        print(f"run {i + 1}: modelsync {ms_wall[-1]:.2f} s (uploads {ms_span[-1]:.2f} s; {provider_line(r.stdout)}), "
              f"floor {floor_wall[-1]:.2f} s (uploads {floor_span[-1]:.2f} s), "
              f"sequential {seq_wall[-1]:.2f} s (uploads {seq_span[-1]:.2f} s)")
    print(f"modelsync apply      wall: {fmt_runs(ms_wall, digits=2)}; upload phase {fmt_runs(ms_span, digits=2)}")
    print(f"floor client         wall: {fmt_runs(floor_wall, digits=2)}; upload phase {fmt_runs(floor_span, digits=2)}")
    print(f"sequential client    wall: {fmt_runs(seq_wall, digits=2)}; upload phase {fmt_runs(seq_span, digits=2)}")
    whole = median(seq_wall) / median(ms_wall)
    phase = median(seq_span) / median(ms_span)
    print(f"speed-up (medians): whole task {whole:.2f}x, upload phase {phase:.2f}x  "
          f"(target >= 8x: {'met' if whole >= 8 else 'NOT met'} whole, {'met' if phase >= 8 else 'NOT met'} phase)")
    print(f"floor client's speed-up: whole task {median(seq_wall) / median(floor_wall):.2f}x, "
          f"upload phase {median(seq_span) / median(floor_span):.2f}x (serve's ceiling here; 10x is the ideal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
