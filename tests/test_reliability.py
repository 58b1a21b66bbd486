"""Reliability: apply killed anywhere, a disk that fills, an unreadable file, a URL gone 404.

Everything runs for real: `modelsync apply` as a subprocess killed with SIGKILL, a real
`modelsync serve` subprocess on loopback speaking astica's API, the embedded backend's
SQLite and blobs read back directly. After every interruption a re-run must converge:
the remote equals the spec, no sample twice, the state file valid.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from reconciler.model import derived_uid, sha256_digest
from tests.cli_helpers import cli_command, make_png, run_cli

KEY = "reliability-key-1"
CLASSES = ("circle", "square")
TRIALS = 20


# --------------------------------------------------------------------------- project helpers


def make_images(root: Path, per_class: int) -> dict[str, list[Path]]:
    files = {}
    for c, cls in enumerate(CLASSES):
        files[cls] = [
            make_png(root / "data" / cls / f"{cls}-{i:03d}.png", cls, seed=1000 * c + i, size=32)
            for i in range(per_class)
        ]
    return files


def variant(files: dict[str, list[Path]], which: int) -> dict[str, list[Path]]:
    """Two overlapping halves: switching between them uploads one quarter and deletes another."""
    out = {}
    for cls, paths in files.items():
        half = len(paths) // 2
        start = 0 if which % 2 == 0 else half // 2
        out[cls] = paths[start : start + half]
    return out


def write_variant_spec(root: Path, chosen: dict[str, list[Path]], provider: str, training: str) -> None:
    lines = ["version: 1", "providers:", "  p:", *provider.splitlines(), "models:", "  shapes:", "    title: Shapes"]
    lines.append("    classes:")
    for cls, paths in chosen.items():
        lines += [f"      {cls}:", "        samples:"]
        lines += [f"          - {p.relative_to(root)}" for p in paths]
    lines += ["    training:", *training.splitlines()]
    (root / "modelsync.yaml").write_text("\n".join(lines) + "\n")


def astica_provider(base_url: str) -> str:
    """The provider block of a spec for astica at ``base_url``, its key from REL_API_KEY."""
    return f"    type: astica\n    api_key: ${{env:REL_API_KEY}}\n    base_url: {base_url}\n    rate_limit: 100000"


def desired(chosen: dict[str, list[Path]]) -> set[tuple[str, str]]:
    return {(derived_uid(sha256_digest(p.read_bytes())), cls) for cls, paths in chosen.items() for p in paths}


def check_state_file(root: Path) -> dict | None:
    """The state file, if any, is whole JSON that modelsync itself loads."""
    path = root / ".modelsync" / "state.json"
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    from reconciler.state import load_state

    load_state(root)
    return raw


def no_duplicates(samples: list[tuple[str, str, str]]) -> None:
    """(uid, class, digest) rows: no uid twice, no content twice."""
    uids = Counter(uid for uid, _, _ in samples)
    assert not [u for u, n in uids.items() if n > 1], f"duplicate uids: {uids.most_common(3)}"
    contents = Counter(digest for _, _, digest in samples if digest)
    assert not [d for d, n in contents.items() if n > 1], "the same image twice"


def spawn_apply(root: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    cmd = cli_command(root, "apply", "--auto-approve", *extra)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


# --------------------------------------------------------------------------- remotes read back


def _astica_read(c: httpx.Client, path: str, body: dict, field: str):
    """One read of astica's API, retried: the server may be injecting faults (test_faults)."""
    for _ in range(20):
        try:
            answer = c.post(path, json={"tkn": KEY, **body})
            if answer.status_code == 200 and field in answer.json():
                return answer.json()[field]
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{path}: no good answer in 20 tries")


def astica_samples(base_url: str) -> list[tuple[str, str, str]] | None:
    """(uid, class, digest) of the model titled Shapes, read through astica's API; None if absent."""
    with httpx.Client(base_url=base_url, timeout=30) as c:
        listing = _astica_read(c, "/model/list", {}, "dataset_list")
        shapes = [m for m in listing if m["title"] == "Shapes"]
        assert len(shapes) <= 1, f"{len(shapes)} models titled Shapes"
        if not shapes:
            return None
        ds = _astica_read(c, "/model/view", {"model_id": shapes[0]["id"]}, "dataset")
    return [(s.get("uid"), cl["title"], s.get("digest")) for cl in ds["class_list"] for s in cl.get("samples") or []]


def local_samples(root: Path) -> list[tuple[str, str, str]] | None:
    from reconciler.local.service import LocalService

    service = LocalService(root / ".modelsync" / "local")
    try:
        models = [m for m in service.list_models("local") if m.title == "Shapes"]
        assert len(models) <= 1, f"{len(models)} models titled Shapes"
        if not models:
            return None
        detail = service.get_model("local", models[0].id)
        return [(s.uid, c.title, s.digest) for c in detail.classes for s in c.samples]
    finally:
        service.close()


# --------------------------------------------------------------------------- kill anywhere


def kill_anywhere(root: Path, files, provider: str, training: str, env: dict, read_remote, seed: int) -> None:
    """TRIALS times: switch the spec, start apply, SIGKILL it at a seeded random moment,
    check what the kill left, re-run to the end and check the remote equals the spec."""
    rng = random.Random(seed)
    write_variant_spec(root, variant(files, 0), provider, training)
    first = subprocess.run(cli_command(root, "apply", "--auto-approve"), env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    # One whole apply of the kind each trial makes (start, refresh, a switch between variants),
    # timed: kill points spread over it. (The first apply is no measure: it does other work.)
    for which in (1, 0):
        write_variant_spec(root, variant(files, which), provider, training)
        t0 = time.monotonic()
        switch = subprocess.run(cli_command(root, "apply", "--auto-approve", "--parallelism", "4"), env=env,
                                capture_output=True, text=True)
        assert switch.returncode == 0, switch.stderr
        full = time.monotonic() - t0
    window = full  # shrinks when applies end before their kill (a loaded CI machine speeds up)
    killed = 0
    for trial in range(1, TRIALS + 1):
        before = variant(files, trial - 1)
        after = variant(files, trial)
        write_variant_spec(root, after, provider, training)
        if trial % 5 == 0:  # now and then from nothing, so create_model gets killed too
            r = subprocess.run(cli_command(root, "destroy", "--auto-approve"), env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            before = {}
        proc = spawn_apply(root, env, "--parallelism", "4")
        delay = rng.uniform(0.2, 1.1) * window
        try:
            proc.wait(timeout=delay)
            window = max(0.3 * full, 0.7 * window)  # it ended first: the machine is faster now
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        # What the kill left: a whole state file, no duplicate, nothing but declared samples.
        check_state_file(root)
        mid = read_remote() or []
        no_duplicates(mid)
        allowed = desired(before) | desired(after)
        assert {(u, c) for u, c, _ in mid} <= allowed, f"trial {trial}: undeclared samples after the kill"
        # Re-run to the end: the remote equals the spec.
        r = subprocess.run(cli_command(root, "apply", "--auto-approve"), env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"trial {trial} (killed after {delay:.2f} s): {r.stderr}"
        landed = read_remote()
        assert landed is not None
        no_duplicates(landed)
        assert {(u, c) for u, c, _ in landed} == desired(after), f"trial {trial}"
        state = check_state_file(root)
        managed = state["models"]["shapes"]["samples"]
        assert not [u for u, v in managed.items() if v.get("pending")], f"trial {trial}: intents left pending"
        assert set(managed) >= {u for u, _ in desired(after)}
    assert killed >= TRIALS // 2, f"only {killed} of {TRIALS} applies were still running when killed"
    plan = subprocess.run(cli_command(root, "plan", "--detailed-exitcode"), env=env, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stdout + plan.stderr


@pytest.mark.slow
def test_kill_anywhere_astica_against_serve(tmp_path: Path, serve_process):
    # 30 ms a request keeps each apply busy long enough for kills to land among the uploads.
    # (The astica client also paces itself at astica's 180 requests a minute in all, whatever the
    # spec's rate_limit: so few images keep this test short.)
    server = serve_process(keys=[KEY], rate_limit=None, total_rate_limit=None, faults={"latency": 0.03})
    root = tmp_path / "project"
    files = make_images(root, 8)
    provider = astica_provider(server.base_url)
    env = {**os.environ, "REL_API_KEY": KEY, "NO_COLOR": "1"}
    kill_anywhere(root, files, provider, "      auto: false", env, lambda: astica_samples(server.base_url), seed=5)
    assert KEY not in (root / ".modelsync" / "state.json").read_text()


@pytest.mark.slow
def test_kill_anywhere_embedded_backend_with_training(tmp_path: Path):
    root = tmp_path / "project"
    files = make_images(root, 40)
    env = {**os.environ, "NO_COLOR": "1"}
    training = "      auto: true\n      config: {steps: 40}"
    kill_anywhere(root, files, "    type: local", training, env, lambda: local_samples(root), seed=7)
    # Every re-run trained on what it uploaded: the plan above found no train op pending.


def test_ctrl_c_stops_apply_cleanly_and_a_rerun_converges(tmp_path: Path, serve_process):
    """SIGINT mid-upload: exit 130 with a message, the uploads in flight finish and nothing new
    starts, the state records exactly what landed, and the same command converges."""
    server = serve_process(keys=[KEY], rate_limit=None, total_rate_limit=None, faults={"latency": 0.05})
    root = tmp_path / "project"
    files = make_images(root, 40)
    provider = astica_provider(server.base_url)
    write_variant_spec(root, files, provider, "      auto: false")
    env = {**os.environ, "REL_API_KEY": KEY, "NO_COLOR": "1"}
    proc = spawn_apply(root, env, "--parallelism", "2")
    deadline = time.monotonic() + 60
    while len(astica_samples(server.base_url) or []) < 5:
        assert proc.poll() is None and time.monotonic() < deadline, "apply ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted; run the same command again to converge." in err
    landed = astica_samples(server.base_url)
    assert 5 <= len(landed) < 80, "the interrupt stopped nothing"
    no_duplicates(landed)
    managed = check_state_file(root)["models"]["shapes"]["samples"]
    recorded = {u for u, v in managed.items() if not v.get("pending")}
    remote_uids = {u for u, _, _ in landed}
    assert recorded == remote_uids, f"state only: {recorded - remote_uids}, remote only: {remote_uids - recorded}"
    r = subprocess.run(cli_command(root, "apply", "--auto-approve"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {(u, c) for u, c, _ in astica_samples(server.base_url)} == desired(files)
    plan = subprocess.run(cli_command(root, "plan", "--detailed-exitcode"), env=env, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stdout + plan.stderr


# --------------------------------------------------------------------------- a disk that fills up


def _file_size_limit(limit: int):
    def apply_limit() -> None:  # in the child: writes past ``limit`` bytes fail (EFBIG), even for root
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply_limit


def test_full_disk_names_the_sample_and_the_state_keeps_what_landed(tmp_path: Path):
    """A disk that fills up part-way (simulated with RLIMIT_FSIZE, which binds root too:
    a write past 256 KB in any file fails, as on a full disk): the upload that no longer
    fits fails with an error naming its sample, what landed is in the state, and once
    there is room a re-run converges. One 530 KB image makes sure the limit is reached."""
    root = tmp_path / "project"
    files = make_images(root, 8)
    big = root / "data" / "square" / "square-big.png"
    from PIL import Image

    rnd = random.Random(3)
    Image.frombytes("RGB", (420, 420), rnd.randbytes(420 * 420 * 3)).save(big)  # ~530 KB of noise
    files["square"].append(big)
    write_variant_spec(root, files, "    type: local", "      auto: false")
    assert run_cli(root, "plan").code == 0  # the hash cache is written while there is room
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run(
        cli_command(root, "apply", "--auto-approve", "--parallelism", "1"),
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(256 * 1024),
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # Whichever write no longer fits (the SQLite file or an image's blob): its sample is named.
    named = re.findall(r"upload_sample shapes/\w+/(ms-\w+) \((data/\w+/[\w-]+\.png)\): ", proc.stderr)
    assert named, proc.stderr
    state = check_state_file(root)
    managed = state["models"]["shapes"]["samples"]
    landed = local_samples(root)
    no_duplicates(landed)
    recorded = {u for u, v in managed.items() if not v.get("pending")}
    assert {u for u, _, _ in landed} <= recorded, "a sample landed that the state does not record"
    assert 1 <= len(landed) < 17
    r = run_cli(root, "apply", "--auto-approve")
    assert r.code == 0, r.err
    assert {(u, c) for u, c, _ in local_samples(root)} == desired(files)


# --------------------------------------------------------------------------- an unreadable file


def make_unreadable(path: Path) -> str:
    """Make ``path`` unreadable; as root chmod does not stop reads, so use a symlink loop
    (open fails with ELOOP for every user). Returns how it was done."""
    if os.geteuid() != 0:
        path.chmod(0)
        return "chmod 000"
    path.unlink()
    loop = path.with_name(path.name + ".loop")
    os.symlink(loop.name, path)
    os.symlink(path.name, loop)
    return "symlink loop (running as root: chmod 000 does not block root)"


def test_unreadable_file_at_plan_is_a_clear_error_at_its_position(tmp_path: Path):
    root = tmp_path / "project"
    files = make_images(root, 4)
    write_variant_spec(root, files, "    type: local", "      auto: false")
    victim = files["circle"][2]
    make_unreadable(victim)
    r = run_cli(root, "plan")
    assert r.code == 1
    assert "Traceback" not in r.err
    line = next(x for x in r.err.splitlines() if victim.name in x)
    assert line.startswith("modelsync.yaml:") and "cannot read" in line, r.err
    assert not (root / ".modelsync" / "state.json").exists()


def test_file_unreadable_after_plan_fails_its_upload_and_the_rest_land(tmp_path: Path):
    root = tmp_path / "project"
    files = make_images(root, 6)
    write_variant_spec(root, files, "    type: local", "      auto: false")
    victim = files["square"][3]
    victim_uid = derived_uid(sha256_digest(victim.read_bytes()))
    assert run_cli(root, "plan", "--out", str(root / "plan.json")).code == 0
    how = make_unreadable(victim)
    r = run_cli(root, "apply", str(root / "plan.json"), "--parallelism", "1")
    assert r.code == 1, f"{how}: {r.out}{r.err}"
    assert "Traceback" not in r.err
    assert victim.name in r.err, r.err
    landed = local_samples(root)
    no_duplicates(landed)
    managed = check_state_file(root)["models"]["shapes"]["samples"]
    uids = {u for u, _, _ in landed}
    assert victim_uid not in uids
    assert uids <= {u for u, v in managed.items() if not v.get("pending")}, "landed but not recorded"
    assert len(uids) >= 1


# --------------------------------------------------------------------------- a URL gone 404 half-way


def test_url_that_answers_404_half_way_names_the_sample_and_the_rest_land(
    tmp_path: Path, serve_process, static_files, monkeypatch
):
    """astica fetches URL samples itself: one URL of ten goes 404 after the plan; the apply
    names it, the other nine land and are recorded, and a re-run once it is back converges."""
    web = tmp_path / "web"
    files = make_images(web, 5)
    base = static_files(web)
    server = serve_process(keys=[KEY], rate_limit=None, total_rate_limit=None, allow_private_urls=True)
    root = tmp_path / "project"
    root.mkdir()
    urls = {cls: [f"{base}/{p.relative_to(web)}" for p in paths] for cls, paths in files.items()}
    lines = ["version: 1", "providers:", "  p:", "    type: astica", "    api_key: ${env:REL_API_KEY}"]
    lines += [f"    base_url: {server.base_url}", "    rate_limit: 100000", "models:", "  shapes:", "    title: Shapes"]
    lines.append("    classes:")
    for cls, items in urls.items():
        lines += [f"      {cls}:", "        samples:", *(f"          - {u}" for u in items)]
    lines += ["    training: {auto: false}"]
    (root / "modelsync.yaml").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("REL_API_KEY", KEY)
    assert run_cli(root, "plan", "--out", str(root / "plan.json")).code == 0
    gone = files["square"][2]
    kept = gone.read_bytes()
    gone_uid = derived_uid(sha256_digest(kept))
    gone.unlink()
    r = run_cli(root, "apply", str(root / "plan.json"), "--parallelism", "1")
    assert r.code == 1, r.out + r.err
    assert "Traceback" not in r.err
    failed = [x for x in r.err.splitlines() if gone.name in x]
    assert failed, r.err
    landed = astica_samples(server.base_url)
    no_duplicates(landed)
    uids = {u for u, _, _ in landed}
    assert gone_uid not in uids and len(uids) >= 1
    managed = check_state_file(root)["models"]["shapes"]["samples"]
    assert uids <= {u for u, v in managed.items() if not v.get("pending")}, "landed but not recorded"
    gone.write_bytes(kept)
    r = run_cli(root, "apply", "--auto-approve")
    assert r.code == 0, r.err
    final = astica_samples(server.base_url)
    no_duplicates(final)
    assert len(final) == 10 and gone_uid in {u for u, _, _ in final}
