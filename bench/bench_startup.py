"""Startup: `modelsync --help` and `modelsync validate` on a small spec, and what imports cost.

    python bench/bench_startup.py [--runs 10] [--top 15]

Median wall time of each command (a fresh process each run), then the top modules of
`python -X importtime` for `validate` (self and cumulative time).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK, child_env, ensure_dataset, fmt_runs, header, modelsync_cmd, run_measured  # noqa: E402

ENTRY = "from reconciler.cli import main; main()"


def importtime(args: list[str], cwd: Path) -> list[tuple[int, int, str]]:
    """(self us, cumulative us, module) for each import of one run, from -X importtime."""
    cmd = [sys.executable, "-X", "importtime", "-c", ENTRY, *args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=child_env())
    rows = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line.removeprefix("import time:").split("|")
        rows.append((int(self_us), int(cum_us), name.rstrip()[1:]))  # nesting shows as more indent
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    header("startup: modelsync --help, modelsync validate (small spec)")
    root = ensure_dataset(40, 2, WORK / "startup-40", "--provider", "local")
    ms = modelsync_cmd()
    baseline = [run_measured([sys.executable, "-c", "pass"]).seconds for _ in range(args.runs)]
    helps = [run_measured([*ms, "--help"]).seconds for _ in range(args.runs)]
    validates = [run_measured([*ms, "validate"], cwd=root).seconds for _ in range(args.runs)]
    print(f"python -c pass      : {fmt_runs(baseline)}")
    print(f"modelsync --help    : {fmt_runs(helps)}")
    print(f"modelsync validate  : {fmt_runs(validates)}")
    for label, cmd_args in (("--help", ["--help"]), ("validate", ["validate"])):
        rows = importtime(cmd_args, root)
        top_level = sum(cum for _, cum, name in rows if not name.startswith(" "))
        print(f"\nimports of `modelsync {label}`: {len(rows)} modules, {top_level / 1000:.0f} ms in all (one run)")
        print(f"  {'cumulative ms':>13}  {'self ms':>7}  module")
        for self_us, cum_us, name in sorted(rows, key=lambda r: -r[1])[: args.top]:
            print(f"  {cum_us / 1000:13.1f}  {self_us / 1000:7.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
