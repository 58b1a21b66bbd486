"""serve's own cost per upload: throughput and CPU when the client costs next to nothing.

    python bench/bench_serve_uploads.py [--n 1000] [--latency 0] [--parallelism 10] [--runs 4]

bench/floor_upload.py (raw sockets, asyncio) makes N astica uploads over ten keep-alive
connections to `modelsync serve` (bench/counting_serve.py, no rate limit, optional fault
latency). Figures: the upload span from serve's own request log, uploads/s, and serve's
CPU time per upload (user + system, read from /proc/PID/stat before and after). At
latency 0 that CPU is serve's ceiling on this machine: the latency benchmark's ten
connections need ten uploads per 20 ms round, so serve must spend well under 2 ms on one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, WORK, fmt_runs, good_upload_times, header, median, serve, upload_dataset  # noqa: E402

KEY = "bench-key-serve"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="uploads (default 1000)")
    p.add_argument("--latency", type=float, default=0.0, help="fault latency in seconds (default 0)")
    p.add_argument("--parallelism", type=int, default=10)
    p.add_argument("--runs", type=int, default=4)
    args = p.parse_args(argv)
    header(f"serve uploads: {args.n} from the floor client, {args.parallelism} connections, "
           f"+{args.latency * 1000:.0f} ms a request")
    root = upload_dataset(args.n)
    spans, cpu = [], []
    for i in range(args.runs):
        data = WORK / "serve-uploads"
        shutil.rmtree(data, ignore_errors=True)
        with serve(data, key=KEY, rate_limit=None, total_rate_limit=None, latency=args.latency) as srv:
            before = cpu_seconds(srv.process.pid)
            subprocess.run([sys.executable, str(BENCH_DIR / "floor_upload.py"), srv.base_url, KEY,
                            str(root / "data"), "--parallelism", str(args.parallelism)], check=True,
                           capture_output=True)
            used = cpu_seconds(srv.process.pid) - before
            times = good_upload_times(srv.requests())
        if len(times) != args.n:
            raise SystemExit(f"run {i + 1}: serve logged {len(times)} good uploads of {args.n}")
        spans.append(times[-1] - times[0])
        cpu.append(used / args.n * 1000)
        print(f"run {i + 1}: upload span {spans[-1]:.2f} s, {args.n / spans[-1]:.0f} uploads/s, "
              f"serve CPU {cpu[-1]:.2f} ms an upload")
    print(f"upload span: {fmt_runs(spans, digits=3)}; {args.n / median(spans):.0f} uploads/s")
    print(f"serve CPU an upload: {fmt_runs(cpu, unit='ms', digits=2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
