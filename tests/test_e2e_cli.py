"""End to end through the CLI on the embedded backend, in temporary project directories."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_helpers import copy_quickstart, local_samples, make_png, run_cli, spawn_cli, write_spec


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_quickstart(tmp_path / "quickstart")


def plan_ops(project: Path, *extra: str) -> list[dict]:
    r = run_cli(project, "plan", "--json", *extra)
    assert r.code == 0, r.err
    return r.json()["operations"]


def test_first_apply_creates_everything_then_plan_is_empty(project: Path):
    r = run_cli(project, "plan", "--detailed-exitcode")
    assert r.code == 2, r.err
    assert "Plan: 1 model to create, 48 samples to upload, 1 training run." in r.out

    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    assert "Apply complete" in r.out and "48 samples uploaded" in r.out
    assert len(local_samples(project)) == 48

    r = run_cli(project, "plan", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err
    assert "No changes" in r.out

    lock = json.loads((project / "modelsync.lock").read_text())
    assert lock["models"]["shapes"]["samples"] == 48
    assert lock["models"]["shapes"]["sources"]["data/circle/circle-00.png"]["digest"].startswith("sha256:")
    state = json.loads((project / ".modelsync" / "state.json").read_text())
    assert len(state["models"]["shapes"]["samples"]) == 48


def test_each_change_plans_exactly_its_operations(project: Path):
    assert run_cli(project, "apply", "--auto-approve").code == 0

    # add a sample
    new = make_png(project / "data" / "circle" / "extra.png", "circle", seed=99, size=64)
    ops = plan_ops(project)
    assert [(o["op"], o.get("class"), o.get("source")) for o in ops] == [
        ("upload_sample", "circle", "data/circle/extra.png"),
        ("train", None, None),
    ]
    assert "1 sample added" in ops[-1]["reason"]

    # remove a sample instead
    new.unlink()
    (project / "data" / "square" / "square-03.png").unlink()
    ops = plan_ops(project)
    assert [(o["op"], o.get("class")) for o in ops] == [("delete_sample", "square"), ("train", None)]
    assert ops[0]["reason"] == "no longer declared"
    assert ops[1]["reason"].endswith("1 removed")

    # move a sample between classes (same bytes, same uid)
    shutil.move(project / "data" / "square" / "square-04.png", project / "data" / "circle" / "moved.png")
    ops = plan_ops(project)
    kinds = [(o["op"], o.get("class")) for o in ops if o["op"] != "train"]
    assert sorted(kinds) == [("delete_sample", "square"), ("delete_sample", "square"), ("upload_sample", "circle")]
    moved_uid = next(o["uid"] for o in ops if o["op"] == "upload_sample")
    assert any(o["op"] == "delete_sample" and o["uid"] == moved_uid for o in ops)


def test_changed_bytes_replace_the_sample(project: Path):
    assert run_cli(project, "apply", "--auto-approve").code == 0
    before = {uid for uid, *_ in local_samples(project)}
    make_png(project / "data" / "circle" / "circle-00.png", "circle", seed=12345, size=64)
    ops = plan_ops(project)
    assert [o["op"] for o in ops] == ["delete_sample", "upload_sample", "train"]
    assert ops[0]["uid"] in before and ops[1]["uid"] not in before
    assert run_cli(project, "apply", "--auto-approve").code == 0
    assert run_cli(project, "plan", "--detailed-exitcode").code == 0


def test_saved_plan_applies_and_a_stale_one_is_refused(project: Path):
    planfile = project / "plan.json"
    r = run_cli(project, "plan", "--out", str(planfile))
    assert r.code == 0, r.err
    saved = json.loads(planfile.read_text())
    assert saved["format_version"] == 1 and saved["summary"]["upload_sample"] == 48
    assert run_cli(project, "apply", str(planfile)).code == 0

    # a plan made, then the remote changes under it: refused, nothing done
    make_png(project / "data" / "circle" / "late.png", "circle", seed=7, size=64)
    assert run_cli(project, "plan", "--out", str(planfile)).code == 0
    (project / "data" / "circle" / "late.png").unlink()
    make_png(project / "data" / "square" / "other.png", "square", seed=8, size=64)
    assert run_cli(project, "apply", "--auto-approve").code == 0  # changes remote + state
    r = run_cli(project, "apply", str(planfile))
    assert r.code == 1
    assert "stale plan" in r.err
    assert "Traceback" not in r.err


def test_apply_without_a_terminal_needs_auto_approve(project: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "-C", str(project), "apply"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "--auto-approve" in proc.stderr
    assert not (project / ".modelsync" / "local").exists() or local_samples_or_none(project) is None


def local_samples_or_none(project: Path):
    try:
        return local_samples(project)
    except StopIteration:
        return None


def test_second_concurrent_apply_is_refused(project: Path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from reconciler.state import StateLock\n"
            "with StateLock(Path(sys.argv[1]), 'apply'):\n    print('locked', flush=True); time.sleep(30)",
            str(project),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = run_cli(project, "apply", "--auto-approve")
        assert r.code == 1
        assert f"pid {holder.pid}" in r.err and "modelsync apply" in r.err
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_apply_killed_part_way_converges_on_rerun(tmp_path: Path):
    project = tmp_path / "big"
    for i in range(150):
        make_png(project / "data" / "circle" / f"c{i:03d}.png", "circle", seed=i)
        make_png(project / "data" / "square" / f"s{i:03d}.png", "square", seed=10_000 + i)
    write_spec(
        project,
        "version: 1\nmodels:\n  shapes:\n    title: Shapes\n    classes:\n"
        "      circle: {samples: [data/circle/]}\n      square: {samples: [data/square/]}\n"
        "    training: {auto: false}\n",
    )
    for delay in (0.9, 1.3):
        proc = spawn_cli(project, "apply", "--auto-approve", "--parallelism", "4")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    samples = local_samples(project)
    uids = [uid for uid, _, _ in samples]
    assert len(uids) == len(set(uids)) == 300
    assert run_cli(project, "plan", "--detailed-exitcode").code == 0
    state = json.loads((project / ".modelsync" / "state.json").read_text())
    assert not [u for u, v in state["models"]["shapes"]["samples"].items() if v.get("pending")]


def test_locked_plan_names_the_changed_source(project: Path):
    assert run_cli(project, "apply", "--auto-approve").code == 0
    assert run_cli(project, "plan", "--locked").code == 0
    make_png(project / "data" / "square" / "square-05.png", "square", seed=4242, size=64)
    r = run_cli(project, "plan", "--locked")
    assert r.code == 1
    assert "data/square/square-05.png changed" in r.err


def test_an_in_sync_apply_writes_a_missing_lock_file(project: Path, tmp_path: Path):
    assert run_cli(project, "apply", "--auto-approve").code == 0
    pinned = (project / "modelsync.lock").read_text()
    (project / "modelsync.lock").unlink()
    assert run_cli(project, "plan", "--locked").code == 1
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0 and "No changes" in r.out
    assert (project / "modelsync.lock").read_text() == pinned
    assert run_cli(project, "plan", "--locked", "--detailed-exitcode").code == 0


def test_relative_image_paths_are_taken_from_the_c_directory(project: Path, tmp_path: Path, monkeypatch):
    assert run_cli(project, "apply", "--auto-approve").code == 0
    monkeypatch.chdir(tmp_path)
    r = run_cli(project, "predict", "shapes", "unseen/circle-00.png", "--json")
    assert r.code == 0 and r.json()[0]["label"] == "circle", r.err


def test_destroy_removes_the_model_and_prevent_destroy_blocks_it(project: Path):
    assert run_cli(project, "apply", "--auto-approve").code == 0
    spec = project / "modelsync.yaml"
    spec.write_text(spec.read_text() + "    lifecycle: {prevent_destroy: true}\n")
    r = run_cli(project, "destroy", "--auto-approve")
    assert r.code == 1 and "prevent_destroy" in r.err
    assert len(local_samples(project)) == 48
    spec.write_text(spec.read_text().replace("prevent_destroy: true", "prevent_destroy: false"))
    r = run_cli(project, "destroy", "--auto-approve")
    assert r.code == 0, r.err
    assert local_samples_or_none(project) is None


def test_prevent_destroy_switched_without_other_changes_still_counts(project: Path):
    assert run_cli(project, "apply", "--auto-approve").code == 0
    spec = project / "modelsync.yaml"
    original = spec.read_text()
    spec.write_text(original + "    lifecycle: {prevent_destroy: true}\n")
    assert run_cli(project, "apply", "--auto-approve").code == 0  # nothing to do remotely
    other = (
        "version: 1\nmodels:\n  other:\n    title: Other\n    classes:\n"
        "      circle: {samples: [data/circle/circle-00.png]}\n    training: {auto: false}\n"
    )
    write_spec(project, other)
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 1 and "prevent_destroy" in r.err
    assert len(local_samples(project)) == 48
    spec.write_text(original + "    lifecycle: {prevent_destroy: false}\n")
    assert run_cli(project, "apply", "--auto-approve").code == 0
    write_spec(project, other)
    assert run_cli(project, "apply", "--auto-approve").code == 0
    assert local_samples_or_none(project) is None


def test_a_new_title_replaces_the_model_and_trains_the_replacement(project: Path):
    assert run_cli(project, "apply", "--auto-approve").code == 0
    spec = project / "modelsync.yaml"
    spec.write_text(spec.read_text().replace("title: Shapes", "title: Shapes2"))
    ops = plan_ops(project)
    summary = {}
    for o in ops:
        summary[o["op"]] = summary.get(o["op"], 0) + 1
    assert summary == {"create_model": 1, "upload_sample": 48, "train": 1, "delete_model": 1}
    assert [o["reason"] for o in ops if o["op"] == "train"] == ["never trained"]
    assert run_cli(project, "apply", "--auto-approve").code == 0
    assert run_cli(project, "plan", "--detailed-exitcode").code == 0
    r = run_cli(project, "versions", "shapes", "--json")
    assert r.code == 0 and len(r.json()) == 1


def test_removing_a_model_from_the_spec_plans_its_deletion(project: Path):
    assert run_cli(project, "apply", "--auto-approve").code == 0
    write_spec(
        project,
        "version: 1\nmodels:\n  other:\n    title: Other\n    classes:\n"
        "      circle: {samples: [data/circle/circle-00.png]}\n    training: {auto: false}\n",
    )
    ops = plan_ops(project)
    assert [(o["op"], o["model"]) for o in ops] == [
        ("create_model", "other"),
        ("upload_sample", "other"),
        ("delete_model", "shapes"),
    ]
    assert run_cli(project, "apply", "--auto-approve").code == 0
    assert local_samples_or_none(project) is None


def test_mass_delete_needs_the_flag(project: Path):
    assert run_cli(project, "apply", "--auto-approve").code == 0
    for p in (
        list((project / "data" / "square").glob("*.png"))[:20] + list((project / "data" / "circle").glob("*.png"))[:8]
    ):
        p.unlink()
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 1 and "--allow-mass-delete" in r.err
    assert len(local_samples(project)) == 48
    r = run_cli(project, "apply", "--auto-approve", "--allow-mass-delete")
    assert r.code == 0, r.err
    assert len(local_samples(project)) == 20


def test_status_reports_drift_made_outside_modelsync(project: Path):
    assert run_cli(project, "apply", "--auto-approve").code == 0
    r = run_cli(project, "status")
    assert r.code == 0, r.out + r.err
    from reconciler.local.service import LocalService

    service = LocalService(project / ".modelsync" / "local")
    model = next(m for m in service.list_models("local") if m.title == "Shapes")
    victim = service.get_model("local", model.id).classes[0].samples[0]
    service.delete_sample("local", victim.id)
    with open(project / "data" / "circle" / "circle-00.png", "rb") as f:
        service.add_sample("local", model.id, "circle", _png_variant(f.read()), uid="someone-elses")
    service.close()
    r = run_cli(project, "status", "--json")
    assert r.code == 2
    report = r.json()["models"]["shapes"]
    assert report["removed_outside"] == [victim.uid]
    assert report["added_outside"] == ["someone-elses"]


def _png_variant(data: bytes) -> bytes:
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.putpixel((0, 0), (1, 2, 3))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def test_target_limits_the_plan(project: Path):
    spec = project / "modelsync.yaml"
    spec.write_text(
        spec.read_text()
        + "  solo:\n    title: Solo\n    classes:\n      circle: {samples: [data/circle/circle-01.png]}\n"
        "    training: {auto: false}\n"
    )
    ops = plan_ops(project, "--target", "solo")
    assert {o["model"] for o in ops} == {"solo"}
    r = run_cli(project, "plan", "--target", "nope")
    assert r.code == 1 and "no model 'nope'" in r.err


def _plan_on_a_terminal(project: Path, env: dict[str, str]) -> bytes:
    """Run `modelsync plan` with its stdout on a pseudo-terminal and return what it wrote."""
    import os
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "-C", str(project), "plan"],
        stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.DEVNULL, env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks)


def test_colour_only_on_a_terminal_and_never_with_no_color(project: Path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM")} | {"TERM": "xterm"}
    coloured = _plan_on_a_terminal(project, env)
    assert b"\x1b[" in coloured and b"48 samples to upload" in coloured
    plain = _plan_on_a_terminal(project, env | {"NO_COLOR": "1"})
    assert b"\x1b[" not in plain and b"48 samples to upload" in plain
    r = run_cli(project, "plan")  # a pipe, not a terminal
    assert "\x1b[" not in r.out and "48 samples to upload" in r.out
