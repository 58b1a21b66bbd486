"""The Autogon provider: the whole cycle against `modelsync serve` on loopback (create, upload by
URL, boxes, remove, train, retrain from a saved model, predict), lost answers without
duplicates, and keys."""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from reconciler.local.serve import FaultConfig
from reconciler.local.serve.auth import KeyInfo
from reconciler.model import Box, ImageInput, RemoteSample, TrainRequest, UploadItem, sha256_digest
from reconciler.providers import make_provider
from reconciler.providers.autogon import AutogonProvider, prediction_from
from reconciler.providers.base import NotFound, NotSupported, ProviderConfig, ProviderError
from tests.cli_helpers import run_cli

KEY_A, KEY_B = "autogon-key-a-5555", "autogon-key-b-6666"
KEYS = {KEY_A: KeyInfo(owner="alice"), KEY_B: KeyInfo(owner="bob")}


def provider(base_url: str, key: str = KEY_A, **options) -> AutogonProvider:
    options.setdefault("backoff_base", 0.02)
    cfg = ProviderConfig(name="aug", type="autogon", api_key=key, base_url=base_url, options=options)
    p = make_provider(cfg)
    assert isinstance(p, AutogonProvider)
    return p


def scene(rng: random.Random, size: int = 96) -> tuple[bytes, Box]:
    img = Image.new("RGB", (size, size), (220, 220, 210))
    for _ in range(200):
        img.putpixel((rng.randrange(size), rng.randrange(size)), (180, 180, 170))
    side = rng.randint(24, 34)
    x0, y0 = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
    ImageDraw.Draw(img).rectangle((x0, y0, x0 + side, y0 + side), fill=(30, 60, 160))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), Box("square", x0, y0, side, side)


@pytest.fixture
def scenes(tmp_path: Path) -> list[tuple[Path, Box]]:
    rng = random.Random(11)
    root = tmp_path / "scenes"
    root.mkdir()
    out = []
    for i in range(14):
        data, box = scene(rng)
        path = root / f"scene-{i:02d}.png"
        path.write_bytes(data)
        out.append((path, box))
    return out


def item(path: Path, base: str, box: Box | None, uid: str | None = None) -> UploadItem:
    data = path.read_bytes()
    return UploadItem(
        uid=uid or f"u-{path.stem}",
        class_name="square",
        digest=sha256_digest(data),
        size=len(data),
        filename=path.name,
        read=path.read_bytes,
        url=f"{base}/{path.name}",
        boxes=(box,) if box else (),
    )


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    return ix * iy / (a.w * a.h + b.w * b.h - ix * iy)


def wait_trained(p: AutogonProvider, mid: str, handle: str):
    deadline = time.monotonic() + 120
    status = p.training_status(mid, handle)
    while not status.done and time.monotonic() < deadline:
        time.sleep(0.2)
        status = p.training_status(mid, handle)
    return status


def test_full_cycle_against_serve(serve_thread, static_files, scenes):
    server = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None, allow_private_urls=True)
    base = static_files(scenes[0][0].parent)
    p = provider(server.base_url)
    try:
        assert p.list_models() == []
        mid = p.create_model("Boxes", "vision", "detection", ("demo",))
        (summary,) = p.list_models()
        assert (summary.remote_id, summary.title) == (mid, "Boxes")

        items = [item(path, base, box) for path, box in scenes[:10]]
        ids = [p.upload_sample(mid, it) for it in items]
        assert all(i is not None and i.isdigit() for i in ids) and len(set(ids)) == 10
        with pytest.raises(NotSupported, match="URL"):
            p.upload_sample(mid, UploadItem("local", "square", "", 1, "x.png", lambda: b"", url=None))

        model = p.view_model(mid)
        assert (model.title, model.purpose, model.tags) == ("Boxes", "detection", ("demo",))
        assert set(model.classes) == {"square"} and len(model.samples) == 10
        by_id = {s.remote_id: s for s in model.samples}
        for it, rid in zip(items, ids, strict=True):
            s = by_id[rid]
            assert s.uid is None and s.url == it.url and s.digest == it.digest and s.class_name == "square"
            assert s.boxes == it.boxes

        p.delete_sample(mid, by_id[ids[9]])
        p.delete_sample(mid, by_id[ids[9]])  # already gone: no error
        moved = Box("square", 1.0, 2.0, 30.0, 31.0)
        p.update_sample(mid, by_id[ids[8]], None, (moved,))
        model = p.view_model(mid)
        assert len(model.samples) == 9 and {s.remote_id: s for s in model.samples}[ids[8]].boxes == (moved,)
        p.update_sample(mid, by_id[ids[8]], None, (scenes[8][1],))

        handle = p.start_training(mid, TrainRequest("small", None, {}, "sha256:d", "sha256:c"))
        status = wait_trained(p, mid, handle)
        assert status.state == "trained", status
        assert status.version.version == handle and 0.0 <= status.version.metrics["accuracy"] <= 1.0
        assert status.version.dataset_digest and status.version.dataset_digest.startswith("sha256:")

        again = p.start_training(mid, TrainRequest("small", handle, {}, "sha256:d", "sha256:c2"))
        assert again != handle and wait_trained(p, mid, again).state == "trained"
        assert [v.version for v in p.list_versions(mid)] == [again, handle]
        assert [v.version for v in p.view_model(mid).versions] == [again, handle]

        target_path, truth = scenes[12]
        images = [
            ImageInput(name="local.png", data=target_path.read_bytes()),
            ImageInput(name="by-url", url=f"{base}/{target_path.name}"),
        ]
        preds = p.predict(mid, None, images, confidence_thresh=0.5)
        assert [pr.input for pr in preds] == ["local.png", "by-url"]
        for pr in preds:
            assert pr.label == "square" and 0.5 <= pr.confidence <= 1.0 and pr.boxes
            best = max(pr.boxes, key=lambda b: b.confidence or 0)
            assert iou(best, truth) > 0.5
        assert p.predict(mid, handle, images[:1])[0].label == "square"
        with pytest.raises(NotFound):
            p.predict(mid, "no-such-model", images[:1])

        p.delete_model(mid)
        assert p.list_models() == []
        p.delete_model(mid)  # already gone: no error
        with pytest.raises(NotFound):
            p.view_model(mid)
    finally:
        p.close()


def test_lost_answers_make_no_duplicates(serve_thread, static_files, scenes):
    """Every third answer is dropped after the server acted: the provider looks before re-sending."""
    faults = FaultConfig(drop_rate=0.35, seed=5)
    server = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None, allow_private_urls=True, faults=faults)
    base = static_files(scenes[0][0].parent)
    p = provider(server.base_url, max_retries=8)
    try:
        mid = p.create_model("Lossy", "vision", "detection", ())
        items = [item(path, base, box) for path, box in scenes[:10]]
        ids = [p.upload_sample(mid, it) for it in items]
        assert p.stats.retries > 0  # answers really were lost
        owner_model = server.service.get_model("alice", int(mid))
        stored = [s for c in owner_model.classes for s in c.samples]
        assert len(stored) == 10 and sorted(str(s.id) for s in stored) == sorted(ids)
        assert [m.title for m in p.list_models()] == ["Lossy"]
        for rid in ids[:4]:
            p.delete_sample(mid, RemoteSample(remote_id=rid, uid=None, class_name="square"))
        assert len(p.view_model(mid).samples) == 6
    finally:
        p.close()


def test_keys(serve_thread):
    server = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None)
    a, b, bad = provider(server.base_url), provider(server.base_url, KEY_B), provider(server.base_url, "nope-key")
    try:
        mid = a.create_model("private", "vision", "detection", ())
        with pytest.raises(ProviderError) as exc:
            bad.list_models()
        assert str(exc.value) == "autogon list projects: Invalid API key: send it in the X-AUG-KEY header (HTTP 401)"
        assert b.list_models() == []
        with pytest.raises(NotFound):
            b.view_model(mid)
        with pytest.raises(NotFound):
            b.start_training(mid, TrainRequest("small", None, {}, "", ""))
    finally:
        for p in (a, b, bad):
            p.close()
    with pytest.raises(ProviderError, match="api_key"):
        AutogonProvider(ProviderConfig(name="aug", type="autogon"))


def test_prediction_from_answer():
    entries = [
        {"lbl": "cat", "conf": 0.4, "bbx": {"x": 1, "y": 2, "w": 3, "h": 4}},
        {"lbl": "dog", "conf": 0.9, "bbx": {"x": 5, "y": 6, "w": 7, "h": 8}},
    ]
    pr = prediction_from("img", entries)
    assert (pr.label, pr.confidence) == ("dog", 0.9)
    assert pr.boxes == (Box("cat", 1, 2, 3, 4, 0.4), Box("dog", 5, 6, 7, 8, 0.9))
    assert prediction_from("empty", []).label is None
    assert prediction_from("cls", [{"lbl": "cat", "conf": 0.7, "bbx": None}]).boxes == ()


def served_scenes(tmp_path: Path, static_files, monkeypatch, *, seed: int, count: int) -> tuple[str, Path]:
    """``count`` scenes s0.png... on a loopback file server, the test key in the environment,
    and an empty project directory: (the files' base URL, the project)."""
    rng = random.Random(seed)
    scenes_dir = tmp_path / "scenes"
    scenes_dir.mkdir()
    base = static_files(scenes_dir)
    for i in range(count):
        (scenes_dir / f"s{i}.png").write_bytes(scene(rng)[0])
    monkeypatch.setenv("AUTOGON_TEST_KEY", KEY_A)
    project = tmp_path / "proj"
    project.mkdir()
    return base, project


def write_boxes_spec(project: Path, base_url: str, settings: str, samples: str) -> None:
    """A spec with one Autogon model `boxes` (class square), its key read from AUTOGON_TEST_KEY."""
    (project / "modelsync.yaml").write_text(
        "version: 1\n"
        "providers:\n"
        f"  aug: {{type: autogon, api_key: '${{env:AUTOGON_TEST_KEY}}', base_url: '{base_url}'}}\n"
        "models:\n"
        "  boxes:\n" + settings + "    classes:\n      square:\n        samples:\n" + samples
    )


def test_plan_apply_converges_through_the_cli(serve_thread, static_files, tmp_path, monkeypatch):
    """The reconciler over this provider: apply detection samples with boxes by URL, then an empty
    plan (Autogon keeps no uid: they come back through the state), then predict."""
    server = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None, allow_private_urls=True)
    rng = random.Random(4)
    scenes_dir = tmp_path / "scenes"
    scenes_dir.mkdir()
    base = static_files(scenes_dir)
    lines = []
    for i in range(10):
        data, box = scene(rng)
        (scenes_dir / f"s{i}.png").write_bytes(data)
        lines.append(f"          - url: {base}/s{i}.png\n"
                     f"            boxes: [{{x: {box.x}, y: {box.y}, w: {box.w}, h: {box.h}}}]\n")
    monkeypatch.setenv("AUTOGON_TEST_KEY", KEY_A)
    project = tmp_path / "proj"
    project.mkdir()
    write_boxes_spec(project, server.base_url, "    purpose: detection\n", "".join(lines))
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    assert "10 samples uploaded" in r.out and "boxes trained as version" in r.out
    r = run_cli(project, "plan", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err
    target, truth = scene(rng)
    (tmp_path / "target.png").write_bytes(target)
    r = run_cli(project, "predict", "boxes", str(tmp_path / "target.png"), "--json")
    assert r.code == 0, r.err
    (pred,) = r.json()
    assert pred["label"] == "square" and pred["boxes"]
    best = max(pred["boxes"], key=lambda b: b["confidence"])
    assert iou(Box("square", best["x"], best["y"], best["w"], best["h"]), truth) > 0.5


def test_a_lost_state_adopts_the_uploaded_images_instead_of_copying_them(
    serve_thread, static_files, tmp_path, monkeypatch
):
    """Autogon keeps no uid, so only the state links an image to its uid. A lost state (or a
    fresh CI checkout) must cost a refresh, not a second copy of every image: the plan matches
    remote images to declared ones by class and URL, and apply records them, so that
    undeclaring one afterwards removes it."""
    server = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None, allow_private_urls=True)
    base, project = served_scenes(tmp_path, static_files, monkeypatch, seed=5, count=7)

    def write_spec(count: int) -> None:
        samples = "".join(f"          - url: {base}/s{i}.png\n" for i in range(count))
        settings = "    purpose: classification\n    training: {auto: false}\n"
        write_boxes_spec(project, server.base_url, settings, samples)

    def remote_images() -> list[RemoteSample]:
        p = provider(server.base_url)
        try:
            (model,) = [m for m in p.list_models() if m.title == "boxes"]
            return p.view_model(model.remote_id).samples
        finally:
            p.close()

    write_spec(6)
    assert run_cli(project, "apply", "--auto-approve").code == 0
    uploaded = {s.remote_id for s in remote_images()}
    assert len(uploaded) == 6

    state_file = project / ".modelsync" / "state.json"
    state_file.unlink()
    r = run_cli(project, "plan", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err  # nothing to upload: the six images are the declared ones
    r = run_cli(project, "status")  # and status, matching the same way, agrees
    assert r.code == 0 and r.out.splitlines() == ["boxes: in sync", "In sync."], r.out + r.err
    write_spec(7)
    r = run_cli(project, "apply")  # stdin is not a terminal: refused, and nothing recorded either
    assert r.code == 1 and not state_file.exists(), r.out + r.err
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    assert "1 sample uploaded" in r.out, r.out  # s6 only: no second copy of the six
    now = {s.remote_id for s in remote_images()}
    assert len(now) == 7 and uploaded < now
    recorded = json.loads(state_file.read_text())["models"]["boxes"]["samples"]
    assert {v["remote_id"] for v in recorded.values()} == now

    write_spec(5)  # s5 and s6 undeclared: both are modelsync's, so both go
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    left = remote_images()
    assert len(left) == 5 and not {f"{base}/s5.png", f"{base}/s6.png"} & {s.url for s in left}


def test_status_is_in_sync_after_a_class_rename_that_leaves_an_empty_class(
    serve_thread, static_files, tmp_path, monkeypatch
):
    """Autogon cannot delete a class: renaming one empties the old class, which stays on the
    project. plan has nothing left to do, and status must not call that drift forever."""
    server = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None, allow_private_urls=True)
    base, project = served_scenes(tmp_path, static_files, monkeypatch, seed=6, count=3)
    samples = "".join(f"          - url: {base}/s{i}.png\n" for i in range(3))
    settings = "    purpose: classification\n    training: {auto: false}\n"
    write_boxes_spec(project, server.base_url, settings, samples)
    assert run_cli(project, "apply", "--auto-approve").code == 0
    spec = project / "modelsync.yaml"
    spec.write_text(spec.read_text().replace("      square:\n", "      box:\n"))
    r = run_cli(project, "apply", "--auto-approve", "--allow-mass-delete")
    assert r.code == 0, r.out + r.err
    assert run_cli(project, "plan", "--detailed-exitcode").code == 0
    r = run_cli(project, "status")
    assert r.code == 0 and r.out.splitlines() == ["boxes: in sync", "In sync."], r.out + r.err
