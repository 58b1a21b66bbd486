"""Faults for Autogon and Scenario: what tests/test_faults.py proves for astica.

A real `modelsync serve` subprocess answers a seeded share of requests with 500, 429 +
Retry-After, an answer slower than the client's timeout, or a dropped connection after the
effect landed. Both vendors take images by URL only, so the samples are served from
loopback and serve fetches them. Both keep no uid: modelsync maps their image ids back to
uids through the state, so a lost answer that is re-sent must neither add the image twice
nor record the wrong id. Apply, re-run until it succeeds, must leave the remote equal to
the spec (read back through the vendor's own HTTP dialect), nothing duplicated, nothing
lost, every uid recorded with the id of its image, an empty plan after, and report the
retries it made.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from reconciler.model import derived_uid
from tests.cli_helpers import run_cli
from tests.test_faults import CLIENT_TIMEOUT, FAULTS, apply_until_done
from tests.test_reliability import check_state_file, desired, make_images, no_duplicates, variant

KEY = "faults-vendor-key-1"
TEAM, PROJECT = "team_faults", "proj_faults"  # Scenario's scope (the key is limited to them)
BOX = "{x: 3, y: 3, w: 20, h: 20}"  # on every 32x32 image: Autogon is a detection API

# (remote image id, class, digest) of every image of the model titled Shapes
Rows = list[tuple[str, str, str]]


# --------------------------------------------------------------------------- remotes read back


def _read(c: httpx.Client, path: str, pick: Callable[[dict], object], **kw) -> object:
    """One read of the vendor's API, retried: the server is injecting faults into reads too."""
    for _ in range(30):
        try:
            answer = c.get(path, **kw)
            if answer.status_code == 200:
                return pick(answer.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{path}: no good answer in 30 tries")


def autogon_rows(base_url: str) -> Rows | None:
    with httpx.Client(base_url=base_url, headers={"X-AUG-KEY": KEY}, timeout=30) as c:
        projects = _read(c, "/api/v1/label/project/", lambda b: b["data"])
        shapes = [p for p in projects if p["name"] == "Shapes"]
        assert len(shapes) <= 1, f"{len(shapes)} projects named Shapes"
        if not shapes:
            return None
        images = _read(c, f"/api/v1/label/project/{shapes[0]['id']}/", lambda b: b["data"]["images"])
    for img in images:  # the spec's box came through on every image
        assert [a["bbx"] for a in img["annotations"]] == [{"x": 3, "y": 3, "w": 20, "h": 20}], img
    return [(str(img["image_id"]), img["lbl"], img["digest"]) for img in images]


def scenario_rows(base_url: str) -> Rows | None:
    scope = {"team_id": TEAM, "project_id": PROJECT}
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        models = _read(c, "/scenario/models", lambda b: b["models"], params=scope)
        shapes = [m for m in models if m["name"] == "Shapes"]
        assert len(shapes) <= 1, f"{len(shapes)} models named Shapes"
        if not shapes:
            return None
        images = _read(c, f"/scenario/models/{shapes[0]['id']}", lambda b: b["model"]["trainingImages"], params=scope)
    return [(img["id"], img["className"], img["digest"]) for img in images]


# --------------------------------------------------------------------------- the vendors


@dataclass(frozen=True)
class Vendor:
    name: str
    keys: dict[str, dict]  # for the serve's keys file
    provider: str  # the spec's provider lines after `type:`
    purpose: str
    sample: str  # how one sample URL is declared ({url})
    rows: Callable[[str], Rows | None]


VENDORS = {
    "autogon": Vendor(
        name="autogon",
        keys={KEY: {"owner": "alice"}},
        provider="",
        purpose="detection",
        sample="          - url: {url}\n            boxes: [" + BOX + "]",
        rows=autogon_rows,
    ),
    "scenario": Vendor(
        name="scenario",
        keys={KEY: {"owner": "carol", "team_id": TEAM, "projects": [PROJECT]}},
        provider=f"    team_id: {TEAM}\n    project_id: {PROJECT}\n",
        purpose="classification",
        sample="          - {url}",
        rows=scenario_rows,
    ),
}


def write_spec(root: Path, vendor: Vendor, chosen: dict[str, list[Path]], base_url: str, files_url: str) -> None:
    """The samples by URL (``files_url`` serves ``root``); the client's timeout below the slow answers."""
    lines = ["version: 1", "providers:", "  p:", f"    type: {vendor.name}", "    api_key: ${env:FAULTS_API_KEY}"]
    lines += [f"    base_url: {base_url}", f"    timeout: {CLIENT_TIMEOUT}"]
    lines += vendor.provider.splitlines()
    lines += ["models:", "  shapes:", "    title: Shapes", f"    purpose: {vendor.purpose}", "    classes:"]
    for cls, paths in chosen.items():
        lines += [f"      {cls}:", "        samples:"]
        lines += [vendor.sample.replace("{url}", f"{files_url}/{p.relative_to(root).as_posix()}") for p in paths]
    lines.append("    training: {auto: false}")
    (root / "modelsync.yaml").write_text("\n".join(lines) + "\n")


def check_remote(vendor: Vendor, server_url: str, chosen: dict[str, list[Path]]) -> Rows:
    """The remote equals the spec, no image twice; returns what it holds."""
    rows = vendor.rows(server_url)
    assert rows is not None
    landed = [(derived_uid(digest), cls, digest) for _, cls, digest in rows]
    no_duplicates(landed)
    assert {(u, c) for u, c, _ in landed} == desired(chosen)
    return rows


def check_state(root: Path, rows: Rows, chosen: dict[str, list[Path]]) -> None:
    """A valid state recording exactly the spec's samples, each with the id of its own image."""
    state = check_state_file(root)
    managed = state["models"]["shapes"]["samples"]
    assert not [u for u, v in managed.items() if v.get("pending")]
    assert set(managed) == {u for u, _ in desired(chosen)}
    # The vendor keeps no uid: the recorded image id is all that ties an image to its uid.
    image_of = {derived_uid(digest): rid for rid, _, digest in rows}
    wrong = {u: (v.get("remote_id"), image_of[u]) for u, v in managed.items() if v.get("remote_id") != image_of[u]}
    assert not wrong, f"uids recorded with another image's id (recorded, real): {wrong}"


def check_converged(root: Path, vendor: Vendor, server_url: str, chosen: dict[str, list[Path]]) -> None:
    check_state(root, check_remote(vendor, server_url, chosen), chosen)


# --------------------------------------------------------------------------- the tests


@pytest.mark.slow
@pytest.mark.parametrize("vendor", list(VENDORS.values()), ids=list(VENDORS))
def test_apply_converges_under_faults_with_nothing_duplicated_or_lost(
    tmp_path: Path, serve_process, static_files, monkeypatch, vendor: Vendor
):
    server = serve_process(
        keys=vendor.keys, rate_limit=None, total_rate_limit=None, allow_private_urls=True, faults=FAULTS
    )
    monkeypatch.setenv("FAULTS_API_KEY", KEY)
    root = tmp_path / "project"
    files = make_images(root, 12)
    files_url = static_files(root)
    seen = [0, 0, 0]
    for which in (0, 1):  # create and upload; then upload a quarter and delete another
        chosen = variant(files, which)
        write_spec(root, vendor, chosen, server.base_url, files_url)
        for i, n in enumerate(apply_until_done(root)):
            seen[i] += n
        check_converged(root, vendor, server.base_url, chosen)
    requests, retries, throttled = seen
    assert retries > 0 and throttled > 0, f"apply reported {requests} requests, {retries} retries, {throttled} 429s"
    r = run_cli(root, "plan", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err


@pytest.mark.parametrize("vendor", list(VENDORS.values()), ids=list(VENDORS))
def test_retries_are_reported_even_when_nothing_fails(
    tmp_path: Path, serve_process, static_files, monkeypatch, vendor: Vendor
):
    """The request/retry line is part of apply's report (0 retries on a healthy server)."""
    server = serve_process(keys=vendor.keys, rate_limit=None, total_rate_limit=None, allow_private_urls=True)
    monkeypatch.setenv("FAULTS_API_KEY", KEY)
    root = tmp_path / "project"
    files = make_images(root, 2)
    write_spec(root, vendor, files, server.base_url, static_files(root))
    r = run_cli(root, "apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    assert re.search(r"p: ([\d,]+) requests, 0 retries, 0 throttled \(HTTP 429\)", r.out + r.err), r.out + r.err
    check_converged(root, vendor, server.base_url, files)


# --------------------------------------------------------------------------- runs that give up

# Only dropped connections (the effect landed, the answer is lost), and no retries: an operation
# whose answer is dropped fails its run although it took effect, and the next run must cope with
# what the failed one left. One worker, so the requests come in one order. Which request draws a
# drop still shifts whenever the code sends one request more or less: so many operations that
# some surely lose their answer, whatever the order.
GIVE_UP_FAULTS = {"drop_rate": 0.15, "seed": 3}
GIVE_UP_RUNS = 40
GIVE_UP_IMAGES = 20  # a class: 40 uploads


def apply_until_done_giving_up(root: Path, *extra: str) -> list[str]:
    """Apply (one worker) until a run succeeds; the error lines of the runs that failed."""
    errors: list[str] = []
    for _ in range(GIVE_UP_RUNS):
        r = run_cli(root, "apply", "--auto-approve", "--parallelism", "1", *extra)
        if "Traceback" in r.err:
            pytest.fail(r.err)
        if r.code == 0:
            return errors
        errors += [x for x in r.err.splitlines() if x.startswith("Error: ")]
    pytest.fail(f"apply did not converge in {GIVE_UP_RUNS} runs: {errors}")


def lost_answers(errors: list[str], op: str) -> set[str]:
    """The uids whose ``op`` failed for want of an answer (with drops only: it took effect)."""
    return {m.group(1) for x in errors if (m := re.match(rf"Error: {op} shapes/\w+/(ms-\w+).*: no answer", x))}


def start_giving_up(tmp_path: Path, serve_process, static_files, monkeypatch, vendor: Vendor):
    server = serve_process(
        keys=vendor.keys, rate_limit=None, total_rate_limit=None, allow_private_urls=True, faults=GIVE_UP_FAULTS
    )
    monkeypatch.setenv("FAULTS_API_KEY", KEY)
    root = tmp_path / "project"
    files = make_images(root, GIVE_UP_IMAGES)
    no_retries = Vendor(**{**vendor.__dict__, "provider": vendor.provider + "    max_retries: 0\n"})
    return server, root, files, static_files(root), no_retries


@pytest.mark.slow
@pytest.mark.parametrize("vendor", list(VENDORS.values()), ids=list(VENDORS))
def test_an_upload_that_landed_in_a_run_that_gave_up_is_not_stored_twice(
    tmp_path: Path, serve_process, static_files, monkeypatch, vendor: Vendor
):
    """The failed run leaves an intent without an image id (the answer that carried it was lost);
    the next run drops the intent, and must neither upload the uid again (Autogon would store the
    image twice) nor lose it."""
    server, root, files, files_url, no_retries = start_giving_up(tmp_path, serve_process, static_files, monkeypatch,
                                                                  vendor)
    write_spec(root, no_retries, files, server.base_url, files_url)
    errors = apply_until_done_giving_up(root)
    assert lost_answers(errors, "upload_sample"), f"no upload lost its answer: {errors}"
    check_converged(root, vendor, server.base_url, files)
    write_spec(root, vendor, files, server.base_url, files_url)  # retries again: the plan's reads may meet drops
    r = run_cli(root, "plan", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err


@pytest.mark.slow
@pytest.mark.parametrize("vendor", list(VENDORS.values()), ids=list(VENDORS))
def test_a_delete_that_landed_in_a_run_that_gave_up_leaves_no_record(
    tmp_path: Path, serve_process, static_files, monkeypatch, vendor: Vendor
):
    server, root, files, files_url, no_retries = start_giving_up(tmp_path, serve_process, static_files, monkeypatch,
                                                                  vendor)
    kept = {cls: paths[:2] for cls, paths in files.items()}
    for _ in range(3):  # all, then all but 4 deleted; again if no delete lost its answer
        write_spec(root, no_retries, files, server.base_url, files_url)
        apply_until_done_giving_up(root)
        write_spec(root, no_retries, kept, server.base_url, files_url)
        errors = apply_until_done_giving_up(root, "--allow-mass-delete")
        deleted = lost_answers(errors, "delete_sample")
        if deleted:
            break
    else:
        pytest.fail("no delete lost its answer, so this test cannot show the bug")
    rows = check_remote(vendor, server.base_url, kept)
    managed = check_state_file(root)["models"]["shapes"]["samples"]
    stale = set(managed) - {u for u, _ in desired(kept)}
    # the samples whose delete landed in a run that failed are forgotten by the next run
    assert not stale, f"state.json still records samples deleted from the remote: {sorted(stale)}"
    check_state(root, rows, kept)
