"""Refresh cost: the requests a no-op plan makes against `serve`, 10 models x 10k samples.

    python bench/bench_refresh.py [--models 10] [--n 10000] [--runs 3]

Setup (once, cached under bench/.work): M models of N images each are applied through
the embedded backend straight into a serve data directory (the fast way to hold 100k
samples); the spec is then switched to an astica provider whose base_url is a
`modelsync serve` over that directory (bench/counting_serve.py, astica's documented
limits 90/min per endpoint, 180 in all). Each run: `modelsync plan --detailed-exitcode`
must find no change; the server's log gives the requests by endpoint.
Target (DESIGN.md): one list plus one view per model (11 for 10 models), whatever the
sample count.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    WORK,
    astica_env,
    ensure_dataset,
    fmt_runs,
    header,
    modelsync_cmd,
    run_measured,
    serve,
)

KEY = "bench-key-refresh"
OWNER = "local"  # the embedded provider's owner: serve shows the key exactly what the setup applied


def setup(root: Path) -> None:
    marker = root / ".applied-local"
    if marker.exists():
        return
    t0 = time.perf_counter()
    run_measured([*modelsync_cmd(), "apply", "--auto-approve"], cwd=root)
    print(f"setup: applied through the embedded backend in {time.perf_counter() - t0:.1f} s (once)")
    (root / ".modelsync" / "state.json").unlink()  # the astica provider starts with no state
    marker.touch()


def astica_spec(root: Path, base_url: str) -> None:
    spec = root / "modelsync.yaml"
    text = spec.read_text()
    text = re.sub(
        r"(?ms)^providers:\n  bench:\n.*?(?=^models:)",
        f"providers:\n  bench:\n    type: astica\n    api_key: ${{env:BENCH_API_KEY}}\n    base_url: {base_url}\n",
        text,
    )
    spec.write_text(text)


def local_spec(root: Path) -> None:
    spec = root / "modelsync.yaml"
    text = re.sub(
        r"(?ms)^providers:\n  bench:\n.*?(?=^models:)",
        "providers:\n  bench:\n    type: local\n    path: serve/service\n",
        spec.read_text(),
    )
    spec.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=10)
    p.add_argument("--n", type=int, default=10_000, help="samples per model (default 10000)")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    header(f"refresh cost: no-op plan over {args.models} models x {args.n:,} samples against serve (astica)")
    root = ensure_dataset(
        args.n, 2, WORK / f"refresh-{args.models}x{args.n}", "--models", str(args.models),
        "--provider", "local", "--local-path", "serve/service",
    )
    local_spec(root)
    setup(root)
    counts, walls = [], []
    with serve(root / "serve", key=KEY, rate_limit=90, total_rate_limit=180, owner=OWNER,
               service_dir=root / "serve" / "service") as srv:
        astica_spec(root, srv.base_url)
        try:
            for i in range(args.runs):
                srv.reset()
                r = run_measured([*modelsync_cmd(), "plan", "--detailed-exitcode"], cwd=root, env=astica_env(KEY))
                if r.returncode != 0:
                    detail = r.stdout[-1500:] + r.stderr[-1500:]
                    raise SystemExit(f"the plan is not empty (exit {r.returncode}):\n{detail}")
                by_endpoint = Counter(path for _, _, path, _ in srv.requests())
                counts.append(by_endpoint)
                walls.append(r.seconds)
                shown = ", ".join(f"{path} {n}" for path, n in sorted(by_endpoint.items()))
                print(f"run {i + 1}: {sum(by_endpoint.values())} requests ({shown}); plan {r.seconds:.2f} s")
        finally:
            local_spec(root)
    expected = 1 + args.models
    worst = max(sum(c.values()) for c in counts)
    print(f"modelsync plan wall: {fmt_runs(walls, digits=2)}")
    print(f"requests per no-op plan: max {worst} (target {expected} = 1 list + {args.models} views: "
          f"{'met' if worst <= expected else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
