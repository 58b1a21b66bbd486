"""No-op plan at scale: `modelsync plan` vs `dvc status` on the same folder, warm caches.

    python bench/bench_noop_plan.py [--n 100000] [--k 10] [--runs 5]

N generated PNGs in K class folders, embedded backend, applied once; then, alternating,
`modelsync plan --detailed-exitcode` (must report no changes) and `dvc status` (DVC in
its own venv under bench/.work/dvc-venv, created here when missing; `dvc add` of each
class folder once). Prints wall time and peak RSS medians and the ratio.
Targets (DESIGN.md): modelsync <= 1/4 of DVC's time, <= 250 MB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
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

DVC_VENV = WORK / "dvc-venv"


def dvc_bin() -> Path:
    """DVC in the benchmark's own venv (never a modelsync dependency)."""
    exe = DVC_VENV / "bin" / "dvc"
    if not exe.exists():
        print(f"installing DVC into {DVC_VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(DVC_VENV)], check=True)
        subprocess.run([str(DVC_VENV / "bin" / "pip"), "install", "-q", "dvc"], check=True)
    return exe


def dvc_version(dvc: Path) -> str:
    return subprocess.run([str(dvc), "--version"], capture_output=True, text=True, check=True).stdout.strip()


def prepare_dvc(dvc: Path, root: Path, classes: list[str]) -> None:
    """`dvc init --no-scm` and `dvc add` each class folder, once per dataset."""
    marker = root / ".dvc-added"
    if marker.exists():
        return
    if not (root / ".dvc").exists():
        subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=root, check=True)
    t0 = time.perf_counter()
    for c in classes:
        subprocess.run([str(dvc), "add", "-q", f"data/{c}"], cwd=root, check=True)
    print(f"dvc add of {len(classes)} folders (once): {time.perf_counter() - t0:.1f} s")
    marker.touch()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="images (default 100000)")
    p.add_argument("--k", type=int, default=10, help="class folders (default 10)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of each tool (default 5)")
    p.add_argument("--no-dvc", action="store_true", help="time modelsync only")
    args = p.parse_args(argv)
    header(f"no-op plan: {args.n:,} samples in {args.k} classes, embedded backend, warm caches")

    root = ensure_dataset(args.n, args.k, WORK / f"noop-{args.n}-{args.k}", "--provider", "local")
    classes = sorted(d.name for d in (root / "data").iterdir() if d.is_dir())
    dvc = None if args.no_dvc else dvc_bin()
    if dvc is not None:
        print(f"dvc: {dvc_version(dvc)}")
        prepare_dvc(dvc, root, classes)  # before modelsync: dvc add may rewrite the files
    prepare_applied(root)

    ms_cmd = [*modelsync_cmd(), "plan", "--detailed-exitcode"]
    # Warm-up: both tools' caches are filled and the page cache holds the files.
    warm = run_measured(ms_cmd, cwd=root)
    if warm.returncode != 0:
        raise SystemExit(f"the plan is not empty after apply:\n{warm.stdout[-2000:]}")
    if dvc is not None:
        run_measured([str(dvc), "status"], cwd=root)

    ms_t, ms_m, dvc_t, dvc_m = [], [], [], []
    last = ""
    for _ in range(args.runs):
        r = run_measured(ms_cmd, cwd=root)
        if r.returncode != 0:
            raise SystemExit(f"modelsync plan found changes (exit {r.returncode})")
        ms_t.append(r.seconds)
        ms_m.append(r.max_rss_mb)
        last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        if dvc is not None:
            d = run_measured([str(dvc), "status"], cwd=root)
            dvc_t.append(d.seconds)
            dvc_m.append(d.max_rss_mb)

    print(f"modelsync plan says: {last}")
    print(f"modelsync plan  wall: {fmt_runs(ms_t)}")
    print(f"modelsync plan  peak RSS: {fmt_runs(ms_m, 'MB', 0)}")
    if dvc is not None:
        print(f"dvc status      wall: {fmt_runs(dvc_t)}")
        print(f"dvc status      peak RSS: {fmt_runs(dvc_m, 'MB', 0)}")
        ratio = median(ms_t) / median(dvc_t)
        print(f"ratio modelsync/dvc (medians): {ratio:.3f}  (target <= 0.25: {'met' if ratio <= 0.25 else 'NOT met'})")
    mem = median(ms_m)
    print(f"peak memory (median): {mem:.0f} MB  (target <= 250 MB: {'met' if mem <= 250 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
