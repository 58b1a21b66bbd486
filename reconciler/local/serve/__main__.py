"""`python -m reconciler.local.serve`: the same flags as `modelsync serve` (+ hidden fault flags)."""

from __future__ import annotations

import argparse
import sys

from reconciler.local.serve.auth import KeyInfo, load_keys_file, normalize_keys
from reconciler.local.serve.faults import FaultConfig


def _limit(text: str) -> int | None:
    """A requests-a-minute limit; 0 or 'none' turns it off."""
    if text.lower() in ("0", "none", "off"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of requests a minute, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


_TWICE = object()  # --total-rate-limit not given (not a string: argparse would parse it)


def _total(rate_limit: int | None, total: object) -> int | None:
    """The total limit: as given (None: off), or by default twice the per-endpoint one."""
    if total is _TWICE:
        return 2 * rate_limit if rate_limit else None
    return total  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelsync serve", description="Serve the embedded backend over vendor APIs.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--data", default=".modelsync/local", help="data directory of the embedded service")
    p.add_argument("--key", action="append", default=[], help="an accepted API key (repeatable)")
    p.add_argument("--keys-file", help="JSON/YAML file: {keys: [{key, owner, permissions, team_id, projects}]}")
    p.add_argument("--rate-limit", type=_limit, default=90, help="requests a minute per endpoint and key (0: off)")
    p.add_argument(
        "--total-rate-limit", type=_limit, default=_TWICE,
        help="requests a minute per key in all (default: twice --rate-limit, astica's ratio; 0: off)",
    )
    p.add_argument("--allow-private-urls", action="store_true", help="let URL inputs reach private addresses")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    hidden = argparse.SUPPRESS
    p.add_argument("--fault-error-rate", type=float, default=0.0, help=hidden)
    p.add_argument("--fault-throttle-rate", type=float, default=0.0, help=hidden)
    p.add_argument("--fault-slow-rate", type=float, default=0.0, help=hidden)
    p.add_argument("--fault-slow-seconds", type=float, default=1.0, help=hidden)
    p.add_argument("--fault-drop-rate", type=float, default=0.0, help=hidden)
    p.add_argument("--fault-latency", type=float, default=0.0, help=hidden)
    p.add_argument("--fault-seed", type=int, default=0, help=hidden)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        keys: dict[str, KeyInfo] = normalize_keys(args.key)
        if args.keys_file:
            keys.update(load_keys_file(args.keys_file))
        faults = FaultConfig(
            error_rate=args.fault_error_rate,
            throttle_rate=args.fault_throttle_rate,
            slow_rate=args.fault_slow_rate,
            slow_seconds=args.fault_slow_seconds,
            drop_rate=args.fault_drop_rate,
            latency_seconds=args.fault_latency,
            seed=args.fault_seed,
        )
    except ValueError as exc:
        print(f"modelsync serve: {exc}", file=sys.stderr)
        return 1
    from reconciler.local.serve.runner import run

    run(
        host=args.host,
        port=args.port,
        data_dir=args.data,
        keys=keys,
        rate_limit=args.rate_limit,
        total_rate_limit=_total(args.rate_limit, args.total_rate_limit),
        allow_private_urls=args.allow_private_urls,
        log_level=args.log_level,
        faults=faults if faults.active else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
