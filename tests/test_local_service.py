"""The embedded service against real SQLite and real blob files in tmp_path."""

from __future__ import annotations

import hashlib
import io
import json
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from reconciler.local.blobs import INLINE_MAX
from reconciler.local.db import CHECKPOINT_EVERY, SCHEMA_VERSION
from reconciler.local.errors import (
    ConflictError,
    InvalidInputError,
    LocalError,
    NotFoundError,
    StateError,
    StorageError,
    WouldWait,
)
from reconciler.local.images import inspect_image
from reconciler.local.jobs import version_name
from reconciler.local.service import LocalService

OWNER = "alice"


def png(kind: str = "circle", seed: int = 0, size: int = 32, fmt: str = "PNG") -> bytes:
    """A small real image: a dark circle or square on a light noisy background."""
    rng = random.Random(f"{kind}-{seed}")
    img = Image.new("RGB", (size, size), tuple(rng.randint(170, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    side = rng.randint(size // 2, size - 8)
    x0, y0 = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
    colour = tuple(rng.randint(0, 110) for _ in range(3))
    (draw.ellipse if kind == "circle" else draw.rectangle)((x0, y0, x0 + side, y0 + side), fill=colour)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def expected_dataset_digest(pairs) -> str:
    lines = sorted(f"{c}\t{d}" for c, d in pairs)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.fixture
def svc(tmp_path: Path):
    service = LocalService(tmp_path / "data")
    yield service
    service.close()


@pytest.fixture
def make_svc(tmp_path: Path):
    """Factory: a LocalService on tmp_path/data with the given options, closed afterwards."""
    made: list[LocalService] = []

    def make(**options) -> LocalService:
        made.append(LocalService(tmp_path / "data", **options))
        return made[-1]

    yield make
    for service in made:
        service.close()


def shapes_model(svc: LocalService, n: int = 8, owner: str = OWNER, title: str = "Shapes") -> int:
    model = svc.create_model(owner, title)
    for kind in ("circle", "square"):
        for i in range(n):
            svc.add_sample(owner, model.id, kind, png(kind, i), uid=f"{kind}-{i}")
    return model.id


# --------------------------------------------------------------------------- models


def test_create_list_get_delete_models(svc: LocalService):
    a = svc.create_model(OWNER, "Shapes", tags=("demo", "x"))
    b = svc.create_model(OWNER, "Other", purpose="detection")
    assert a.id != b.id and a.tags == ("demo", "x") and b.purpose == "detection"
    svc.add_sample(OWNER, a.id, "circle", png("circle", 1), uid="c1")
    svc.add_sample(OWNER, a.id, "square", png("square", 1))

    listed = {m.title: m for m in svc.list_models(OWNER)}
    assert set(listed) == {"Shapes", "Other"}
    shapes = listed["Shapes"]
    assert (shapes.num_classes, shapes.num_samples) == (2, 2)
    assert shapes.total_bytes == len(png("circle", 1)) + len(png("square", 1))
    assert not shapes.trained and shapes.latest_version is None and shapes.training_state is None

    detail = svc.get_model(OWNER, a.id)
    assert detail.model == shapes
    assert [c.title for c in detail.classes] == ["circle", "square"]
    circle = detail.classes[0]
    assert circle.total_bytes == len(png("circle", 1))
    (sample,) = circle.samples
    assert (sample.uid, sample.class_title, sample.digest) == ("c1", "circle", digest(png("circle", 1)))
    assert (sample.media_type, sample.width, sample.height) == ("image/png", 32, 32)
    assert svc.read_blob(sample.digest) == png("circle", 1)

    svc.delete_model(OWNER, a.id)
    assert [m.title for m in svc.list_models(OWNER)] == ["Other"]
    with pytest.raises(NotFoundError, match=f"model {a.id}: not found"):
        svc.get_model(OWNER, a.id)
    # ids are never reused, even for the highest one
    c = svc.create_model(OWNER, "Third")
    assert c.id > b.id


def test_empty_title_and_bad_ids_are_refused_with_the_field_named(svc: LocalService):
    with pytest.raises(InvalidInputError, match="title: must not be empty"):
        svc.create_model(OWNER, "  ")
    m = svc.create_model(OWNER, "M")
    with pytest.raises(InvalidInputError, match="class: must not contain tabs"):
        svc.add_sample(OWNER, m.id, "a\tb", png())
    with pytest.raises(InvalidInputError, match="model_id: expected an id, got 'abc'"):
        svc.get_model(OWNER, "abc")


# --------------------------------------------------------------------------- samples


def test_add_sample_is_idempotent_by_uid_and_refuses_conflicts(svc: LocalService):
    m = svc.create_model(OWNER, "M")
    first = svc.add_sample(OWNER, m.id, "circle", png("circle", 1), uid="u1")
    again = svc.add_sample(OWNER, m.id, "circle", png("circle", 1), uid="u1")
    assert again == first
    assert svc.get_model(OWNER, m.id).model.num_samples == 1

    with pytest.raises(ConflictError, match="'u1' already exists .* with other content"):
        svc.add_sample(OWNER, m.id, "circle", png("circle", 2), uid="u1")
    with pytest.raises(ConflictError, match="with class 'circle'"):
        svc.add_sample(OWNER, m.id, "square", png("circle", 1), uid="u1")
    # without a uid nothing is deduplicated (astica keeps every upload)
    svc.add_sample(OWNER, m.id, "circle", png("circle", 1))
    assert svc.get_model(OWNER, m.id).model.num_samples == 2
    # the same uid in another model is another sample
    other = svc.create_model(OWNER, "Other")
    svc.add_sample(OWNER, other.id, "square", png("square", 1), uid="u1")


def test_every_supported_format_is_recognised_by_content(svc: LocalService):
    m = svc.create_model(OWNER, "M")
    for fmt, media in (("PNG", "png"), ("JPEG", "jpeg"), ("GIF", "gif"), ("BMP", "bmp"), ("WEBP", "webp")):
        rec = svc.add_sample(OWNER, m.id, "c", png("circle", 3, size=20, fmt=fmt), uid=fmt)
        assert (rec.media_type, rec.width, rec.height) == (f"image/{media}", 20, 20)


def test_non_images_damaged_images_and_oversize_are_refused(tmp_path: Path):
    svc = LocalService(tmp_path / "d", max_image_bytes=2000)
    try:
        m = svc.create_model(OWNER, "M")
        fake = tmp_path / "notes.png"
        fake.write_text("this is not a picture\n" * 5)
        with pytest.raises(InvalidInputError) as err:
            svc.add_sample(OWNER, m.id, "c", fake.read_bytes(), uid="fake")
        assert str(err.value) == "sample 'fake': not an image (PNG, JPEG, GIF, BMP or WebP)"

        truncated = png("circle", 1)[:-30]
        with pytest.raises(InvalidInputError, match="not an image .*damaged PNG"):
            svc.add_sample(OWNER, m.id, "c", truncated)
        jpeg = png("square", 1, fmt="JPEG")
        with pytest.raises(InvalidInputError, match="damaged JPEG"):
            svc.add_sample(OWNER, m.id, "c", jpeg[: len(jpeg) // 2])

        bomb = io.BytesIO()
        Image.new("1", (9000, 9000)).save(bomb, format="PNG")  # tiny file, 81M pixels
        with pytest.raises(InvalidInputError, match="bomb: 9000x9000 pixels is over the limit"):
            inspect_image(bomb.getvalue(), max_bytes=10**6, what="bomb")

        big = png("circle", 1, size=400)
        assert len(big) > 2000
        with pytest.raises(InvalidInputError, match=f"{len(big):,} bytes is over the limit of 2,000 bytes"):
            svc.add_sample(OWNER, m.id, "c", big)
        assert svc.get_model(OWNER, m.id).model.num_samples == 0
    finally:
        svc.close()


def test_delete_and_update_samples_and_classes(svc: LocalService):
    mid = shapes_model(svc, n=3)
    detail = svc.get_model(OWNER, mid)
    circle, square = detail.classes
    svc.delete_sample(OWNER, circle.samples[0].id)
    assert svc.delete_sample_by_uid(OWNER, "circle-1", mid) == 1
    assert svc.delete_sample_by_uid(OWNER, "circle-1", mid) == 0
    with pytest.raises(NotFoundError):
        svc.delete_sample(OWNER, circle.samples[0].id)

    box = {"label": "sq", "x": 1, "y": 2, "w": 10, "h": 12}
    updated = svc.update_sample(OWNER, square.samples[0].id, caption="a square", boxes=[box])
    assert updated.caption == "a square"
    assert updated.boxes == ({"label": "sq", "x": 1.0, "y": 2.0, "w": 10.0, "h": 12.0},)
    assert svc.update_sample(OWNER, square.samples[0].id, caption=None).boxes == updated.boxes
    with pytest.raises(InvalidInputError, match=r"boxes\[0\].w: must be greater than 0"):
        svc.update_sample(OWNER, square.samples[0].id, boxes=[{**box, "w": 0}])

    svc.delete_class(OWNER, square.id)
    detail = svc.get_model(OWNER, mid)
    assert [(c.title, len(c.samples)) for c in detail.classes] == [("circle", 1)]
    assert detail.model.num_samples == 1
    with sqlite3.connect(svc.db.path) as raw:
        assert raw.execute("SELECT count(*) FROM samples WHERE class_id = ?", (square.id,)).fetchone()[0] == 0


def test_tenancy_another_owners_ids_look_absent(svc: LocalService):
    mid = shapes_model(svc, n=1)
    detail = svc.get_model(OWNER, mid)
    sample = detail.classes[0].samples[0]
    cls = detail.classes[1]
    absent_model = mid + 1000

    def message(call) -> str:
        with pytest.raises(NotFoundError) as err:
            call()
        return str(err.value)

    assert svc.list_models("bob") == []
    assert message(lambda: svc.get_model("bob", mid)) == f"model {mid}: not found"
    assert message(lambda: svc.get_model("bob", absent_model)) == f"model {absent_model}: not found"
    message(lambda: svc.add_sample("bob", mid, "x", png()))
    message(lambda: svc.delete_model("bob", mid))
    message(lambda: svc.delete_class("bob", cls.id))
    message(lambda: svc.get_sample("bob", sample.id))
    assert message(lambda: svc.delete_sample("bob", sample.id)) == f"sample {sample.id}: not found"
    assert svc.delete_sample_by_uid("bob", sample.uid) == 0
    message(lambda: svc.start_training("bob", mid))
    message(lambda: svc.list_versions("bob", mid))
    src = svc.add_source(OWNER, "proj", "a.png", png())
    message(lambda: svc.get_source("bob", src.id))
    # alice still has everything
    assert svc.get_model(OWNER, mid).model.num_samples == 2
    assert svc.get_source(OWNER, src.id).digest == digest(png())


# --------------------------------------------------------------------------- durability and concurrency


def test_schema_is_versioned_and_a_newer_schema_is_refused(tmp_path: Path):
    svc = LocalService(tmp_path / "d")
    svc.close()
    db = tmp_path / "d" / "modelsync.db"
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LocalError, match="newer than this modelsync understands"):
        LocalService(tmp_path / "d")


def test_two_services_on_one_directory_see_each_others_writes(tmp_path: Path):
    a, b = LocalService(tmp_path / "d"), LocalService(tmp_path / "d")
    try:
        m = a.create_model(OWNER, "M")
        b.add_sample(OWNER, m.id, "circle", png("circle", 1), uid="x")
        assert a.get_model(OWNER, m.id).model.num_samples == 1
        with pytest.raises(ConflictError):
            a.add_sample(OWNER, m.id, "circle", png("circle", 2), uid="x")
    finally:
        a.close()
        b.close()


KILL_CHILD = textwrap.dedent(
    """
    import io, random, sys
    from PIL import Image
    from reconciler.local.service import LocalService
    svc = LocalService(sys.argv[1])
    mid = int(sys.argv[2])
    i = 0
    while True:
        rng = random.Random(i)
        img = Image.new("RGB", (24, 24), tuple(rng.randrange(256) for _ in range(3)))
        img.putpixel((i % 24, (i // 24) % 24), (i % 256, 7, 9))
        out = io.BytesIO()
        img.save(out, format="PNG")
        svc.add_sample("alice", mid, f"class{i % 3}", out.getvalue(), uid=f"k{i}")
        i += 1
    """
)


def test_sigkill_during_a_batch_of_uploads_leaves_a_consistent_store(tmp_path: Path):
    root = tmp_path / "d"
    svc = LocalService(root)
    mid = svc.create_model(OWNER, "M").id
    svc.close()
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(root), str(mid)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            with sqlite3.connect(root / "modelsync.db", timeout=30) as raw:
                n = raw.execute("SELECT count(*) FROM samples").fetchone()[0]
            if n >= 40 or time.monotonic() > deadline:
                break
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.02)
        assert n >= 40, "the child made no progress"
        time.sleep(random.uniform(0, 0.05))  # land anywhere in the loop
    finally:
        child.kill()
        child.wait()

    svc = LocalService(root)
    try:
        with sqlite3.connect(root / "modelsync.db") as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        detail = svc.get_model(OWNER, mid)
        samples = [s for c in detail.classes for s in c.samples]
        assert len(samples) >= 40
        for s in samples:
            assert digest(svc.read_blob(s.digest)) == s.digest
        # the uid sequence has no holes: each add_sample committed whole or not at all
        assert sorted(int(s.uid[1:]) for s in samples) == list(range(len(samples)))
        # and the store still takes writes
        svc.add_sample(OWNER, mid, "class0", png("circle", 1), uid="after")
    finally:
        svc.close()


@pytest.mark.parametrize("inline_blob_max", [INLINE_MAX, 0], ids=["in-database", "files"])
def test_orphan_blobs_are_collected_and_referenced_ones_kept(make_svc, inline_blob_max: int):
    svc = make_svc(inline_blob_max=inline_blob_max)
    m = svc.create_model(OWNER, "M")
    kept = svc.add_sample(OWNER, m.id, "c", png("circle", 1))
    gone = svc.add_sample(OWNER, m.id, "c", png("circle", 2))
    svc.delete_sample(OWNER, gone.id)
    assert svc.collect_garbage(older_than=3600) == 0  # too young: a writer may be about to commit
    assert svc.collect_garbage(older_than=0) == 1
    assert svc.read_blob(kept.digest) == png("circle", 1)
    with pytest.raises(NotFoundError):
        svc.read_blob(gone.digest)


def bulk_insert(svc: LocalService, model_id: int, n: int, classes: int = 10) -> None:
    """Rows straight into SQLite (no blobs): a fast way to a large catalogue for timing."""
    with svc.db.write() as c:
        ids = [
            c.execute("INSERT INTO classes (model_id, title, created_at) VALUES (?, ?, 1.0)", (model_id, f"class{i}"))
            .lastrowid
            for i in range(classes)
        ]
        c.executemany(
            "INSERT INTO samples (model_id, class_id, uid, digest, size, media_type, width, height, caption, boxes, "
            "created_at, source_url) VALUES (?, ?, ?, ?, ?, 'image/png', 48, 48, NULL, ?, ?, NULL)",
            (
                (model_id, ids[i % classes], f"ms-{i:024x}", digest(str(i).encode()), 1000 + i,
                 '[{"label":"a","x":1,"y":1,"w":2,"h":2}]' if i % 1000 == 0 else None, float(i))
                for i in range(n)
            ),
        )


def test_get_model_on_a_large_catalogue_is_fast_and_complete(svc: LocalService):
    n = 20_000
    m = svc.create_model(OWNER, "Big")
    bulk_insert(svc, m.id, n)
    svc.get_model(OWNER, m.id)  # warm the page cache
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        detail = svc.get_model(OWNER, m.id)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    listed = svc.list_models(OWNER)
    list_time = time.perf_counter() - t0
    print(f"\nget_model at {n:,} samples: best {min(times) * 1000:.0f} ms; list_models {list_time * 1000:.1f} ms")

    assert detail.model.num_samples == n and listed[0].num_samples == n
    assert [len(c.samples) for c in detail.classes] == [n // 10] * 10
    first = detail.classes[0].samples
    assert [s.id for s in first] == sorted(s.id for s in first)
    assert all(s.class_title == "class0" and s.class_id == detail.classes[0].id for s in first)
    assert first[0].boxes == ({"label": "a", "x": 1, "y": 1, "w": 2, "h": 2},) and first[1].boxes == ()
    assert detail.model.total_bytes == sum(1000 + i for i in range(n))
    assert min(times) < 2.0  # a loose bound: the figure that matters is printed above


def test_jobs_of_dead_processes_are_marked_failed_and_live_ones_kept(tmp_path: Path):
    svc = LocalService(tmp_path / "d")
    mid = svc.create_model(OWNER, "M").id
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from reconciler.local.jobs import _token_of

        alive_token = _token_of(alive.pid)
        with svc.db.write() as c:
            for runner in (f"{dead.pid}:1", alive_token, f"{alive.pid}:123"):  # the last: a recycled pid
                c.execute(
                    "INSERT INTO training_jobs (model_id, state, config, model_type, runner, created_at) "
                    "VALUES (?, 'training', '{}', 'small', ?, 0)",
                    (mid, runner),
                )
        svc.close()
        svc = LocalService(tmp_path / "d")
        with sqlite3.connect(tmp_path / "d" / "modelsync.db") as raw:
            rows = raw.execute("SELECT runner, state, error FROM training_jobs ORDER BY id").fetchall()
        assert rows[0][1] == "failed" and "interrupted" in rows[0][2] and str(dead.pid) in rows[0][2]
        assert rows[1][1] == "training"
        assert rows[2][1] == "failed"
    finally:
        alive.kill()
        alive.wait()
        svc.close()


def test_version_names_are_utc_seconds_bumped_until_free():
    t = 1_700_000_000.7  # 2023-11-14 22:13:20 UTC
    assert version_name(lambda n: False, t) == "20231114_221320"
    taken = {"20231114_221320", "20231114_221321"}
    assert version_name(taken.__contains__, t) == "20231114_221322"


def test_sources_are_stored_as_blobs(svc: LocalService):
    a = svc.add_source(OWNER, "proj", "scan.png", png("square", 4))
    assert svc.get_source(OWNER, a.id) == a
    assert svc.read_blob(a.digest) == png("square", 4)
    assert [s.id for s in svc.list_sources(OWNER, "proj")] == [a.id]
    with pytest.raises(InvalidInputError, match="empty file"):
        svc.add_source(OWNER, "proj", "empty.bin", b"")


# --------------------------------------------------------------------------- training and inference


def test_training_records_a_version_with_the_digest_of_its_samples(svc: LocalService):
    mid = shapes_model(svc, n=8)
    svc.configure(OWNER, mid, {"steps": 60})
    job = svc.start_training(OWNER, mid)
    assert job.state == "queued"
    done = svc.wait_training(OWNER, job.id, timeout=60)
    assert done.state == "trained", done.error
    assert done.progress == 1.0

    pairs = [(c.title, s.digest) for c in svc.get_model(OWNER, mid).classes for s in c.samples]
    (version,) = svc.list_versions(OWNER, mid)
    assert version.version == done.version
    assert len(version.version) == 15 and version.version[8] == "_"
    assert version.dataset_digest == expected_dataset_digest(pairs)
    assert version.num_samples == 16 and version.config == {"steps": 60} and version.model_type == "small"
    body = json.dumps({"base": None, "config": {"steps": 60}, "model_type": "small"}, separators=(",", ":"))
    assert version.config_digest == digest(body.encode())
    assert 0.0 <= version.metrics["accuracy"] <= 1.0 and version.trained_at >= version.started_at

    model = svc.get_model(OWNER, mid).model
    assert model.trained and model.latest_version == version.version and model.training_state == "trained"
    preds = svc.predict(OWNER, mid, [png("circle", 100), png("square", 100)])
    assert [set(p) >= {"label", "confidence", "scores"} for p in preds] == [True, True]
    assert all(p["label"] in ("circle", "square") and 0 <= p["confidence"] <= 1 for p in preds)
    with pytest.raises(InvalidInputError, match=r"images\[1\]: not an image"):
        svc.predict(OWNER, mid, [png(), b"hello"])


def test_training_preconditions_and_a_second_start_conflicts(svc: LocalService):
    m = svc.create_model(OWNER, "One class")
    svc.add_sample(OWNER, m.id, "circle", png("circle", 1))
    with pytest.raises(StateError, match="at least two classes"):
        svc.start_training(OWNER, m.id)
    with pytest.raises(StateError, match="not trained yet"):
        svc.predict(OWNER, m.id, [png()])
    with pytest.raises(InvalidInputError, match="training.config.steps"):
        svc.configure(OWNER, m.id, {"steps": -1})
    with pytest.raises(InvalidInputError, match="model_type: expected small, medium or large"):
        svc.start_training(OWNER, m.id, model_type="huge")

    mid = shapes_model(svc, n=6, title="Two classes")
    job = svc.start_training(OWNER, mid, config={"steps": 100_000})
    try:
        with pytest.raises(ConflictError, match="Model is already training"):
            svc.start_training(OWNER, mid, config={"steps": 10})
    finally:
        svc.stop_training(OWNER, mid)
        assert svc.wait_training(OWNER, job.id, timeout=60).state == "canceled"


def test_stop_training_keeps_the_last_good_version(svc: LocalService):
    mid = shapes_model(svc, n=6)
    first = svc.wait_training(OWNER, svc.start_training(OWNER, mid, config={"steps": 30}).id, timeout=60)
    assert first.state == "trained", first.error
    svc.add_sample(OWNER, mid, "circle", png("circle", 50), uid="late")

    job = svc.start_training(OWNER, mid, config={"steps": 100_000})
    deadline = time.monotonic() + 30
    while svc.get_training_job(OWNER, job.id).state != "training" and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped = svc.stop_training(OWNER, mid)
    assert stopped.id == job.id
    final = svc.wait_training(OWNER, job.id, timeout=60)
    assert final.state == "canceled" and final.version is None

    assert [v.version for v in svc.list_versions(OWNER, mid)] == [first.version]
    assert svc.resolve_version(OWNER, mid).version == first.version
    model = svc.get_model(OWNER, mid).model
    assert model.latest_version == first.version and model.training_state == "canceled"
    with pytest.raises(StateError, match="not training"):
        svc.stop_training(OWNER, mid)


def test_fine_tune_from_a_version_or_a_saved_name(svc: LocalService):
    mid = shapes_model(svc, n=6)
    base = svc.wait_training(OWNER, svc.start_training(OWNER, mid, config={"steps": 30}, save_name="shapes-v1").id,
                             timeout=60)
    assert base.state == "trained", base.error
    assert svc.find_version_by_save_name(OWNER, "shapes-v1").version == base.version
    assert svc.resolve_version(OWNER, mid, "shapes-v1").version == base.version

    other = shapes_model(svc, n=4, title="Other")
    tuned = svc.wait_training(OWNER, svc.start_training(OWNER, other, config={"steps": 20}, base="shapes-v1").id,
                              timeout=60)
    assert tuned.state == "trained", tuned.error
    assert svc.list_versions(OWNER, other)[0].base == "shapes-v1"
    again = svc.wait_training(OWNER, svc.start_training(OWNER, mid, config={"steps": 20}, base=base.version).id,
                              timeout=60)
    assert again.state == "trained", again.error
    assert again.version != base.version  # same second: the name is bumped
    with pytest.raises(InvalidInputError, match="base: no version of model .* named 'nope'"):
        svc.start_training(OWNER, mid, base="nope")
    with pytest.raises(NotFoundError):
        svc.find_version_by_save_name("bob", "shapes-v1")


def test_batch_inference_runs_in_the_background(svc: LocalService):
    mid = shapes_model(svc, n=6)
    trained = svc.wait_training(OWNER, svc.start_training(OWNER, mid, config={"steps": 40}).id, timeout=60)
    inputs = [(f"img{i}.png", png("circle" if i % 2 else "square", 200 + i)) for i in range(40)]
    job = svc.start_inference(OWNER, mid, inputs, project="proj", output_layer="gold")
    assert (job.state, job.total, job.version) == ("Queued", 40, trained.version)
    final = svc.wait_inference(OWNER, job.id, timeout=60)
    assert final.state == "Finished", final.error
    assert final.done == 40 and [r["input"] for r in final.results] == [n for n, _ in inputs]
    assert all(r["label"] in ("circle", "square") for r in final.results)
    assert (final.project, final.output_layer) == ("proj", "gold")
    with pytest.raises(NotFoundError):
        svc.get_inference_job("bob", job.id)
    with pytest.raises(InvalidInputError, match="bad.txt: not an image"):
        svc.start_inference(OWNER, mid, [("bad.txt", b"plain text")])


def test_a_training_interrupted_by_close_is_recorded_and_the_next_open_can_train(tmp_path: Path):
    svc = LocalService(tmp_path / "d")
    mid = shapes_model(svc, n=4)
    job = svc.start_training(OWNER, mid, config={"steps": 100_000})
    svc.close()
    svc = LocalService(tmp_path / "d")
    try:
        state = svc.get_training_job(OWNER, job.id)
        assert state.state in ("canceled", "failed") and state.error
        again = svc.wait_training(OWNER, svc.start_training(OWNER, mid, config={"steps": 20}).id, timeout=60)
        assert again.state == "trained", again.error
    finally:
        svc.close()


def test_a_model_deleted_while_training_stops_its_job(svc: LocalService):
    mid = shapes_model(svc, n=4)
    job = svc.start_training(OWNER, mid, config={"steps": 100_000})
    svc.delete_model(OWNER, mid)
    with pytest.raises(NotFoundError):
        svc.get_training_job(OWNER, job.id)
    # the thread notices and ends; close() would wait for it otherwise
    deadline = time.monotonic() + 30
    while svc.jobs._threads and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not svc.jobs._threads


def test_progress_is_written_while_training(svc: LocalService):
    mid = shapes_model(svc, n=10)
    job = svc.start_training(OWNER, mid, config={"steps": 100_000}, model_type="medium")
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cur = svc.get_training_job(OWNER, job.id)
        seen.add(round(cur.progress, 2))
        if len(seen) >= 3:
            break
        time.sleep(0.05)
    svc.stop_training(OWNER, mid)
    svc.wait_training(OWNER, job.id, timeout=60)
    assert len(seen) >= 3, seen


def ball_scene(seed: int, size: int = 64) -> tuple[bytes, dict]:
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (230, 230, 230))
    side = rng.randint(14, 24)
    x, y = rng.randint(0, size - side - 1), rng.randint(0, size - side - 1)
    ImageDraw.Draw(img).ellipse((x, y, x + side, y + side), fill=(20, 20, 150))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue(), {"label": "ball", "x": x, "y": y, "w": side, "h": side}


def test_detection_models_train_on_boxes_and_predict_boxes(svc: LocalService):
    m = svc.create_model(OWNER, "Balls", purpose="detection")
    data, _ = ball_scene(0)
    svc.add_sample(OWNER, m.id, "ball", data, uid="nobox")
    with pytest.raises(StateError, match="detection model needs samples with boxes"):
        svc.start_training(OWNER, m.id)
    for i in range(1, 12):
        data, box = ball_scene(i)
        svc.add_sample(OWNER, m.id, "ball", data, boxes=[box])
    job = svc.wait_training(OWNER, svc.start_training(OWNER, m.id, config={"steps": 60}).id, timeout=120)
    assert job.state == "trained", job.error
    (pred,) = svc.predict(OWNER, m.id, [ball_scene(99)[0]], confidence_thresh=0.2)
    assert pred["boxes"] and {"label", "confidence", "x", "y", "w", "h"} <= set(pred["boxes"][0])


def test_small_images_are_stored_in_the_database_and_large_ones_as_files(tmp_path: Path, make_svc):
    """Small blobs commit with their sample's row (no file, no fsync); a large one is a file."""
    svc = make_svc()
    m = svc.create_model(OWNER, "Sizes")
    small = svc.add_sample(OWNER, m.id, "c", png("circle", 1))
    buf = io.BytesIO()
    rnd = random.Random(7)
    Image.frombytes("RGB", (300, 300), rnd.randbytes(300 * 300 * 3)).save(buf, "PNG")  # noise: ~270 KB
    big_bytes = buf.getvalue()
    assert len(big_bytes) > INLINE_MAX
    big = svc.add_sample(OWNER, m.id, "c", big_bytes)
    assert not svc.blobs.path(small.digest).exists() and svc.blobs.path(big.digest).is_file()
    with sqlite3.connect(tmp_path / "data" / "modelsync.db") as raw:
        stored = {d for (d,) in raw.execute("SELECT digest FROM blobs")}
    assert stored == {small.digest}
    assert svc.read_blob(small.digest) == png("circle", 1) and svc.read_blob(big.digest) == big_bytes


def test_a_full_disk_is_a_storage_error_naming_the_file_and_stores_nothing(make_svc, monkeypatch):
    """A blob stored as a file (here every blob: inline_blob_max=0) meets a full disk."""
    import errno
    import os

    svc = make_svc(inline_blob_max=0)
    model = svc.create_model(OWNER, "Full")

    def no_space(fd: int, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "write", no_space)
        with pytest.raises(StorageError) as exc:
            svc.add_sample(OWNER, model.id, "circle", png("circle", 1))
    blob = svc.blobs.path(digest(png("circle", 1)))
    assert str(exc.value) == f"disk full writing {blob}" and exc.value.code == "storage"
    assert not blob.exists() and list((svc.blobs.root / "tmp").iterdir()) == []
    assert not svc.get_model(OWNER, model.id).classes


def test_adding_without_waiting_refuses_what_would_block_and_leaves_checkpoints_to_a_thread(svc: LocalService):
    """wait=False (serve's event loop): a big image or a file blob is WouldWait with nothing
    stored; small ones are stored, and that connection never runs SQLite's checkpoint."""
    mid = svc.create_model("o", "m").id
    with pytest.raises(WouldWait):
        svc.add_sample("o", mid, "c", png(size=600), uid="big", wait=False)
    noise = Image.frombytes("RGB", (300, 300), random.Random(1).randbytes(300 * 300 * 3))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    assert len(buf.getvalue()) > INLINE_MAX
    with pytest.raises(WouldWait):
        svc.add_sample("o", mid, "c", buf.getvalue(), uid="file-blob", wait=False)
    assert not svc.get_model("o", mid).classes
    due = []
    for i in range(CHECKPOINT_EVERY):
        svc.add_sample("o", mid, "c", png(seed=i), uid=f"s{i}", wait=False)
        due.append(svc.db.checkpoint_due())
    assert due == [False] * (CHECKPOINT_EVERY - 1) + [True]
    assert svc.db.conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    svc.db.checkpoint()
    assert svc.get_model("o", mid).model.num_samples == CHECKPOINT_EVERY
