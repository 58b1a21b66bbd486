"""First plan at scale (hash cache empty) vs `sha256sum` over the same files.

    python bench/bench_first_plan.py [--n 100000] [--k 10] [--runs 5]

The same dataset as bench_noop_plan.py, applied once on the embedded backend. Each run
deletes .modelsync/cache (the hash cache), so `modelsync plan` hashes every file again;
it alternates with `find DIR -name '*.png' -print0 | xargs -0 sha256sum` and the same
with `xargs -P2` (both cores, for fairness). The files stay in the page cache for both.
Target (DESIGN.md): modelsync <= 1.5x sha256sum.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    WORK,
    ensure_dataset,
    fmt_runs,
    header,
    median,
    modelsync_cmd,
    prepare_applied,
    run_measured,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="images (default 100000)")
    p.add_argument("--k", type=int, default=10, help="class folders (default 10)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of each (default 5)")
    args = p.parse_args(argv)
    header(f"first plan: {args.n:,} samples in {args.k} classes, hash cache empty, vs sha256sum")

    root = ensure_dataset(args.n, args.k, WORK / f"noop-{args.n}-{args.k}", "--provider", "local")
    prepare_applied(root)
    cache = root / ".modelsync" / "cache"
    plan_cmd = [*modelsync_cmd(), "plan", "--detailed-exitcode"]
    sha = ["sh", "-c", "find data -name '*.png' -print0 | xargs -0 sha256sum > /dev/null"]
    sha_p2 = ["sh", "-c", "find data -name '*.png' -print0 | xargs -0 -P2 -n 2000 sha256sum > /dev/null"]

    run_measured(sha, cwd=root)  # page cache warm for everyone
    ms_t, ms_m, sha_t, sha2_t = [], [], [], []
    for _ in range(args.runs):
        shutil.rmtree(cache, ignore_errors=True)
        r = run_measured(plan_cmd, cwd=root)
        if r.returncode != 0:
            raise SystemExit(f"modelsync plan found changes (exit {r.returncode}):\n{r.stdout[-1000:]}")
        if "hashing" not in r.stderr:
            raise SystemExit("modelsync plan did not hash: the cache was not empty")
        ms_t.append(r.seconds)
        ms_m.append(r.max_rss_mb)
        sha_t.append(run_measured(sha, cwd=root).seconds)
        sha2_t.append(run_measured(sha_p2, cwd=root).seconds)

    print(f"modelsync plan (cold cache) wall: {fmt_runs(ms_t)}")
    print(f"modelsync plan (cold cache) peak RSS: {fmt_runs(ms_m, 'MB', 0)}")
    print(f"sha256sum (xargs)           wall: {fmt_runs(sha_t)}")
    print(f"sha256sum (xargs -P2)       wall: {fmt_runs(sha2_t)}")
    for name, ref in (("sha256sum", sha_t), ("sha256sum -P2", sha2_t)):
        ratio = median(ms_t) / median(ref)
        verdict = "met" if ratio <= 1.5 else "NOT met"
        print(f"ratio modelsync/{name} (medians): {ratio:.2f}x  (target <= 1.5x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
