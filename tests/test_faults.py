"""Faults: a server that fails a fixed share of requests, and apply still converges.

A real `modelsync serve` subprocess (astica's API) answers a seeded share of requests
with 500, 429 + Retry-After, an answer slower than the client's timeout, or a dropped
connection after the effect landed (the hardest case: did it happen or not?). Apply,
re-run until it succeeds, must leave the remote equal to the spec with nothing
duplicated and nothing lost, and report the retries it made.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.model import derived_uid, sha256_digest
from tests.cli_helpers import run_cli
from tests.test_reliability import KEY, astica_samples, check_state_file, desired, make_images, no_duplicates, variant

FAULTS = {
    "error_rate": 0.12,  # 500 before the handler: nothing happened
    "throttle_rate": 0.08,  # 429 with Retry-After: 1
    "slow_rate": 0.08,  # answered after slow_seconds, past the client's timeout
    "slow_seconds": 2.0,
    "drop_rate": 0.12,  # the handler ran, then the connection drops: landed, answer lost
    "seed": 11,
}
CLIENT_TIMEOUT = 1.0
MAX_RUNS = 4


def write_spec(root: Path, chosen: dict[str, list[Path]], base_url: str) -> None:
    lines = ["version: 1", "providers:", "  p:", "    type: astica", "    api_key: ${env:FAULTS_API_KEY}"]
    # the client's timeout below the server's slow answers (astica's default is 30 s)
    lines += [f"    base_url: {base_url}", "    rate_limit: 100000", f"    timeout: {CLIENT_TIMEOUT}"]
    lines += ["models:", "  shapes:", "    title: Shapes"]
    lines.append("    classes:")
    for cls, paths in chosen.items():
        lines += [f"      {cls}:", "        samples:", *(f"          - {p.relative_to(root)}" for p in paths)]
    lines.append("    training: {auto: false}")
    (root / "modelsync.yaml").write_text("\n".join(lines) + "\n")


def apply_until_done(root: Path) -> tuple[int, int, int]:
    """Run apply until it succeeds (a run may give up on an operation after its retries);
    return the requests, retries and 429s the runs reported."""
    totals = [0, 0, 0]
    for _ in range(MAX_RUNS):
        r = run_cli(root, "apply", "--auto-approve", "--parallelism", "4")
        assert "Traceback" not in r.err
        for line in (r.out + r.err).splitlines():
            m = re.search(r"([\d,]+) requests, ([\d,]+) retries, ([\d,]+) throttled", line)
            if m:
                for i in range(3):
                    totals[i] += int(m.group(i + 1).replace(",", ""))
        if r.code == 0:
            return totals[0], totals[1], totals[2]
    raise AssertionError(f"apply did not converge in {MAX_RUNS} runs: {r.out}{r.err}")


@pytest.mark.slow
def test_apply_converges_under_faults_with_nothing_duplicated_or_lost(
    tmp_path: Path, serve_process, monkeypatch
):
    server = serve_process(keys=[KEY], rate_limit=None, total_rate_limit=None, faults=FAULTS)
    monkeypatch.setenv("FAULTS_API_KEY", KEY)
    root = tmp_path / "project"
    files = make_images(root, 12)
    seen = [0, 0, 0]
    for which in (0, 1):  # create and upload; then upload a quarter and delete another
        chosen = variant(files, which)
        write_spec(root, chosen, server.base_url)
        for i, n in enumerate(apply_until_done(root)):
            seen[i] += n
        landed = astica_samples(server.base_url)
        assert landed is not None
        no_duplicates(landed)
        assert {(u, c) for u, c, _ in landed} == desired(chosen)
        state = check_state_file(root)
        managed = state["models"]["shapes"]["samples"]
        assert not [u for u, v in managed.items() if v.get("pending")]
        assert set(managed) == {u for u, _ in desired(chosen)}
    requests, retries, throttled = seen
    assert retries > 0 and throttled > 0, f"apply reported {requests} requests, {retries} retries, {throttled} 429s"
    assert run_cli(root, "plan", "--detailed-exitcode").code == 0


def test_retries_are_reported_even_when_nothing_fails(tmp_path: Path, serve_process, monkeypatch):
    """The request/retry line is part of apply's report (0 retries on a healthy server)."""
    server = serve_process(keys=[KEY], rate_limit=None, total_rate_limit=None)
    monkeypatch.setenv("FAULTS_API_KEY", KEY)
    root = tmp_path / "project"
    files = make_images(root, 2)
    write_spec(root, files, server.base_url)
    r = run_cli(root, "apply", "--auto-approve")
    assert r.code == 0, r.err
    m = re.search(r"p: ([\d,]+) requests, 0 retries, 0 throttled", r.out + r.err)
    assert m, r.out + r.err
    landed = astica_samples(server.base_url)
    want = sorted(derived_uid(sha256_digest(p.read_bytes())) for ps in files.values() for p in ps)
    assert sorted(u for u, _, _ in landed) == want
