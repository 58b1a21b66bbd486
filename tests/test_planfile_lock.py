"""`apply PLANFILE` and modelsync.lock: the lock pins what the saved plan saw, never bytes that
changed (or files that appeared) between `plan --out` and `apply`. Through the CLI, on the
embedded backend, in temporary copies of the quickstart."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.model import sha256_digest
from tests.cli_helpers import copy_quickstart, local_samples, make_png, run_cli

LOCK = "modelsync.lock"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_quickstart(tmp_path / "quickstart")


@pytest.fixture
def applied(project: Path) -> Path:
    """The quickstart applied once: remote, state and lock file in sync."""
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    return project


def save_plan(project: Path) -> Path:
    planfile = project / "plan.json"
    r = run_cli(project, "plan", "--out", str(planfile))
    assert r.code == 0, r.err
    return planfile


def lock_text(project: Path) -> str:
    return (project / LOCK).read_text()


def state_serial(project: Path) -> int:
    return json.loads((project / ".modelsync" / "state.json").read_text())["serial"]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("Error:")]


def test_unchanged_sources_apply_the_saved_plan_and_lock_what_a_plain_apply_locks(tmp_path: Path):
    saved, direct = copy_quickstart(tmp_path / "saved"), copy_quickstart(tmp_path / "direct")
    planfile = save_plan(saved)
    digests = json.loads(planfile.read_text())["meta"]["source_digests"]
    assert list(digests) == ["shapes"] and digests["shapes"].startswith("sha256:")

    r = run_cli(saved, "apply", str(planfile))
    assert r.code == 0, r.err
    assert "Apply complete" in r.out and "48 samples uploaded" in r.out
    assert run_cli(direct, "apply", "--auto-approve").code == 0
    assert lock_text(saved) == lock_text(direct)
    assert run_cli(saved, "plan", "--locked", "--detailed-exitcode").code == 0


def test_a_saved_plan_with_nothing_to_do_writes_a_missing_lock_file(applied: Path):
    pinned = lock_text(applied)
    (applied / LOCK).unlink()
    r = run_cli(applied, "apply", str(save_plan(applied)))
    assert r.code == 0, r.err
    assert "No changes" in r.out
    assert lock_text(applied) == pinned


def test_a_source_with_no_operation_edited_after_the_plan_is_refused_and_never_locked(applied: Path):
    added = make_png(applied / "data" / "circle" / "extra.png", "circle", seed=99, size=64)
    planfile = save_plan(applied)
    ops = json.loads(planfile.read_text())["operations"]
    assert [(o["op"], o.get("source")) for o in ops] == [("upload_sample", "data/circle/extra.png"), ("train", None)]
    lock_before, serial_before, remote_before = lock_text(applied), state_serial(applied), local_samples(applied)

    edited = make_png(applied / "data" / "square" / "square-03.png", "square", seed=4242, size=64)
    r = run_cli(applied, "apply", str(planfile))
    assert r.code == 1, r.out + r.err
    assert error_lines(r.err) == [
        "Error: stale plan: shapes: source data/square/square-03.png changed since the plan was made; run plan again"
    ]
    assert "Traceback" not in r.err
    # nothing sent, nothing recorded, nothing pinned
    assert local_samples(applied) == remote_before
    assert state_serial(applied) == serial_before
    assert lock_text(applied) == lock_before
    assert sha256_digest(edited.read_bytes()) not in lock_text(applied)

    # a new plan sees the edit; applying it pins the bytes it uploaded
    r = run_cli(applied, "apply", str(save_plan(applied)))
    assert r.code == 0, r.err
    sources = json.loads(lock_text(applied))["models"]["shapes"]["sources"]
    assert sources["data/square/square-03.png"]["digest"] == sha256_digest(edited.read_bytes())
    assert sources["data/circle/extra.png"]["digest"] == sha256_digest(added.read_bytes())
    assert run_cli(applied, "plan", "--locked", "--detailed-exitcode").code == 0


def test_files_added_to_a_glob_and_a_directory_after_the_plan_are_refused_and_never_locked(applied: Path):
    make_png(applied / "data" / "circle" / "circle-00.png", "circle", seed=12345, size=64)  # an upload to plan
    planfile = save_plan(applied)
    lock_before, remote_before = lock_text(applied), local_samples(applied)

    late_circle = make_png(applied / "data" / "circle" / "late.png", "circle", seed=7, size=64)  # data/circle/*.png
    late_square = make_png(applied / "data" / "square" / "late.png", "square", seed=8, size=64)  # path: data/square/
    r = run_cli(applied, "apply", str(planfile))
    assert r.code == 1, r.out + r.err
    assert error_lines(r.err) == [
        "Error: stale plan: shapes: source data/circle/late.png was added since the plan was made",
        "Error: stale plan: shapes: source data/square/late.png was added since the plan was made; run plan again",
    ]
    assert local_samples(applied) == remote_before
    assert lock_text(applied) == lock_before
    for late in (late_circle, late_square):
        assert sha256_digest(late.read_bytes()) not in lock_text(applied)


def test_a_planned_upload_edited_after_the_plan_is_refused_before_anything_is_sent(applied: Path):
    source = applied / "data" / "circle" / "circle-00.png"
    make_png(source, "circle", seed=12345, size=64)
    planfile = save_plan(applied)
    lock_before, remote_before = lock_text(applied), local_samples(applied)
    make_png(source, "circle", seed=54321, size=64)
    r = run_cli(applied, "apply", str(planfile))
    assert r.code == 1, r.out + r.err
    assert error_lines(r.err) == [
        "Error: stale plan: shapes: source data/circle/circle-00.png changed since the plan was made; run plan again"
    ]
    assert local_samples(applied) == remote_before
    assert lock_text(applied) == lock_before


def test_a_file_with_no_operation_removed_after_the_plan_is_named(applied: Path):
    planfile = save_plan(applied)  # nothing to do
    lock_before = lock_text(applied)
    (applied / "data" / "circle" / "circle-07.png").unlink()
    r = run_cli(applied, "apply", str(planfile))
    assert r.code == 1, r.out + r.err
    assert error_lines(r.err) == [
        "Error: stale plan: shapes: source data/circle/circle-07.png was removed since the plan was made; "
        "run plan again"
    ]
    assert lock_text(applied) == lock_before


def test_a_file_renamed_after_the_plan_names_the_model(applied: Path):
    planfile = save_plan(applied)  # nothing to do
    lock_before = lock_text(applied)
    square = applied / "data" / "square"
    (square / "square-05.png").rename(square / "square-05-renamed.png")
    r = run_cli(applied, "apply", str(planfile))
    assert r.code == 1, r.out + r.err
    assert error_lines(r.err) == [
        "Error: stale plan: the sources of model 'shapes' changed since the plan was made; run plan again"
    ]
    assert lock_text(applied) == lock_before


def test_a_source_unreadable_after_the_plan_does_not_stop_the_apply_but_is_not_locked(applied: Path):
    """A source that cannot be read again cannot be checked against the plan: the apply goes on
    (such a source fails its own upload, as before), and the lock file is left as it was."""
    make_png(applied / "data" / "circle" / "extra.png", "circle", seed=99, size=64)
    planfile = save_plan(applied)
    lock_before = lock_text(applied)
    victim = applied / "data" / "square" / "square-03.png"  # already uploaded: no operation
    victim.unlink()
    loop = victim.with_name("square-03.png.loop")  # unreadable for root too (ELOOP)
    os.symlink(loop.name, victim)
    os.symlink(victim.name, loop)
    r = run_cli(applied, "apply", str(planfile))
    assert r.code == 0, r.out + r.err
    assert "Apply complete" in r.out and "1 sample uploaded" in r.out
    warning = [line for line in r.err.splitlines() if line.startswith("Warning:")]
    assert len(warning) == 1 and f"Warning: {LOCK} not updated: " in warning[0], r.err
    assert "data/square" in warning[0] and warning[0].endswith("; run plan again")
    assert lock_text(applied) == lock_before


def test_a_plan_file_from_before_source_digests_is_refused_and_nothing_is_sent(project: Path):
    planfile = save_plan(project)
    body = json.loads(planfile.read_text())
    del body["meta"]["source_digests"]
    planfile.write_text(json.dumps(body, indent=1))
    r = run_cli(project, "apply", str(planfile))
    assert r.code == 1, r.out + r.err
    assert error_lines(r.err) == [
        "Error: stale plan: the plan file does not record what its sources resolved to "
        "(an older modelsync made it); run plan again"
    ]
    assert not (project / ".modelsync" / "state.json").exists()
    assert not (project / LOCK).exists()


def test_a_plan_file_with_malformed_source_digests_is_not_a_plan(project: Path):
    planfile = save_plan(project)
    body = json.loads(planfile.read_text())
    body["meta"]["source_digests"] = ["sha256:0"]
    planfile.write_text(json.dumps(body))
    r = run_cli(project, "apply", str(planfile))
    assert r.code == 1 and "not a modelsync plan" in r.err, r.err
    assert not (project / ".modelsync" / "state.json").exists()


def test_plan_json_and_the_plan_file_record_the_same_source_digests(project: Path):
    r = run_cli(project, "plan", "--json")
    assert r.code == 0, r.err
    recorded = r.json()["meta"]["source_digests"]
    assert set(recorded) == {"shapes"}
    assert json.loads(save_plan(project).read_text())["meta"]["source_digests"] == recorded
    make_png(project / "data" / "circle" / "late.png", "circle", seed=7, size=64)
    assert run_cli(project, "plan", "--json").json()["meta"]["source_digests"] != recorded


def test_an_unreadable_source_in_one_model_does_not_hide_a_change_in_another(project: Path):
    """Model b's only source becomes unreadable, and model a's sources change back to what the
    plan would delete: the saved plan is refused for a (checked on its own), nothing is sent."""
    (project / "modelsync.yaml").write_text(
        "version: 1\n"
        "models:\n"
        "  a:\n"
        "    training: {auto: false}\n"
        "    classes:\n"
        "      circle:\n"
        "        samples: [data/circle/*.png]\n"
        "  b:\n"
        "    training: {auto: false}\n"
        "    classes:\n"
        "      square:\n"
        "        samples: [data/square/square-00.png]\n"
    )
    assert run_cli(project, "apply", "--auto-approve").code == 0
    removed = project / "data" / "circle" / "circle-00.png"
    kept = removed.read_bytes()
    removed.unlink()
    planfile = save_plan(project)  # deletes a's circle-00 sample
    removed.write_bytes(kept)  # ...which is declared again
    victim = project / "data" / "square" / "square-00.png"
    victim.unlink()
    loop = victim.with_name("square-00.png.loop")  # unreadable for root too (ELOOP)
    os.symlink(loop.name, victim)
    os.symlink(victim.name, loop)
    before = local_samples(project, title="a")
    r = run_cli(project, "apply", str(planfile))
    assert r.code == 1, r.out + r.err
    assert any(line.startswith("Error: stale plan: a: ") for line in r.err.splitlines()), r.err
    assert local_samples(project, title="a") == before
