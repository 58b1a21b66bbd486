"""Bad input through the CLI: one line per problem at the right file:line:col, exit 1,
no traceback, and nothing created or changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import copy_quickstart, make_png, run_cli, write_spec

GOOD_HEAD = "version: 1\nmodels:\n  shapes:\n    classes:\n"


def spec_project(tmp_path: Path, text: str) -> Path:
    project = tmp_path / "p"
    make_png(project / "data" / "circle" / "a.png", "circle", 1)
    make_png(project / "data" / "square" / "b.png", "square", 2)
    write_spec(project, text)
    return project


CASES = [
    (
        "unknown key",
        GOOD_HEAD + "      circle: {samples: [data/circle/a.png]}\n      square: {samples: [data/square/b.png]}\n"
        "    trainig: {auto: true}\n",
        "modelsync.yaml:7:5: models.shapes.trainig: unknown key",
    ),
    (
        "missing sample file",
        GOOD_HEAD + "      circle:\n        samples:\n          - data/circle/a.png\n          - data/x.png\n"
        "      square: {samples: [data/square/b.png]}\n",
        "modelsync.yaml:8:13: models.shapes.classes.circle.samples[1]: no such file: data/x.png",
    ),
    (
        "glob matching nothing",
        GOOD_HEAD + "      circle: {samples: ['data/none/*.png']}\n      square: {samples: [data/square/b.png]}\n",
        "modelsync.yaml:5:26: models.shapes.classes.circle.samples[0]: no image files match: data/none/*.png",
    ),
    (
        "one class with auto training",
        GOOD_HEAD + "      circle: {samples: [data/circle/a.png]}\n",
        "modelsync.yaml:4:5: models.shapes.classes: needs two classes or more to train",
    ),
    (
        "bad version",
        "version: 2\nmodels:\n  shapes:\n    classes:\n      circle: {samples: [data/circle/a.png]}\n",
        "modelsync.yaml:1:10: version: unsupported version 2",
    ),
    (
        "wrong type",
        GOOD_HEAD + "      circle: {samples: [data/circle/a.png]}\n      square: {samples: [data/square/b.png]}\n"
        "    training: {model_type: huge}\n",
        "modelsync.yaml:7:28: models.shapes.training.model_type: expected one of small, medium, large, got 'huge'",
    ),
    (
        "unset env var",
        "version: 1\nproviders:\n  prod:\n    type: astica\n    api_key: ${env:MODELSYNC_TEST_UNSET_KEY}\n"
        "models:\n  shapes:\n    classes:\n      circle: {samples: [data/circle/a.png]}\n"
        "      square: {samples: [data/square/b.png]}\n",
        "modelsync.yaml:5:14: providers.prod.api_key:",
    ),
    (
        "duplicate key",
        GOOD_HEAD + "      circle: {samples: [data/circle/a.png]}\n      circle: {samples: [data/square/b.png]}\n",
        "modelsync.yaml:6:7: models.shapes.classes.circle: duplicate key",
    ),
    (
        "a provider that cannot take local files",
        "version: 1\nproviders:\n  ag:\n    type: autogon\n    api_key: ${env:HOME}\n"
        "models:\n  shapes:\n    classes:\n      circle: {samples: [data/circle/a.png]}\n"
        "      square: {samples: [data/square/b.png]}\n",
        "modelsync.yaml:9:26: models.shapes.classes.circle.samples[0]: "
        "provider type 'autogon' cannot upload local files",
    ),
    (
        "a detection model without boxes",
        "version: 1\nmodels:\n  shapes:\n    purpose: detection\n    classes:\n"
        "      circle: {samples: [data/circle/a.png]}\n      square: {samples: [data/square/b.png]}\n",
        "modelsync.yaml:3:3: models.shapes: a detection model learns from boxes, but none of its samples has any",
    ),
    (
        "a box label that is not a class",
        "version: 1\nmodels:\n  shapes:\n    purpose: detection\n    classes:\n"
        "      circle: {samples: [{path: data/circle/a.png, boxes: [{label: circel, x: 1, y: 1, w: 9, h: 9}]}]}\n"
        "      square: {samples: [data/square/b.png]}\n",
        "modelsync.yaml:6:68: models.shapes.classes.circle.samples[0].boxes[0].label: "
        "box label 'circel' is not a class of model 'shapes' (did you mean 'circle'?)",
    ),
    (
        "classes on an inference-only provider",
        "version: 1\nproviders:\n  al: {type: annolab, api_key: '${env:HOME}'}\n"
        "models:\n  shapes:\n    classes:\n      circle: {samples: [data/circle/a.png]}\n",
        "modelsync.yaml:6:5: models.shapes.classes: provider 'al' is annolab, which only runs inference on models "
        "built in its own tools: it cannot upload samples or create classes (remove classes:)",
    ),
    (
        "training config the trainer refuses",
        GOOD_HEAD + "      circle: {samples: [data/circle/a.png]}\n      square: {samples: [data/square/b.png]}\n"
        "    training:\n      config:\n        learning_rate: 0.1\n        steps: -5\n",
        "modelsync.yaml:10:16: models.shapes.training.config.steps: expected a positive integer, got -5",
    ),
    (
        "training config with an unknown key",
        GOOD_HEAD + "      circle: {samples: [data/circle/a.png]}\n      square: {samples: [data/square/b.png]}\n"
        "    training: {config: {stepz: 10}}\n",
        "modelsync.yaml:7:25: models.shapes.training.config.stepz: unknown key (known: batch_size, holdout, l2, "
        "learning_rate, seed, steps)",
    ),
]


@pytest.mark.parametrize("name,text,expected", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_bad_spec_gives_one_line_at_the_right_place_and_changes_nothing(tmp_path, name, text, expected, command):
    project = spec_project(tmp_path, text)
    r = run_cli(project, command)
    assert r.code == 1, r.out
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert any(line.startswith(expected) for line in lines), r.err
    assert not (project / ".modelsync" / "state.json").exists()
    assert not (project / ".modelsync" / "local").exists()


def test_apply_with_a_bad_spec_creates_nothing(tmp_path):
    project = spec_project(tmp_path, CASES[1][1])
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 1
    assert r.err.startswith("modelsync.yaml:8:13:")
    assert not (project / ".modelsync" / "local").exists()


def test_secret_values_never_reach_output(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSYNC_TEST_SECRET", "sk-very-secret-value")
    project = spec_project(
        tmp_path,
        "version: 1\nproviders:\n  prod:\n    type: astica\n    api_key: ${env:MODELSYNC_TEST_SECRET}\n"
        "    base_url: http://127.0.0.1:9\n"
        "models:\n  shapes:\n    classes:\n      circle: {samples: [data/circle/a.png]}\n"
        "      square: {samples: [data/square/b.png]}\n",
    )
    r = run_cli(project, "plan")
    assert r.code == 1  # nothing listens on port 9
    assert "sk-very-secret-value" not in r.out + r.err
    for path in project.rglob("*"):
        if path.is_file():
            assert b"sk-very-secret-value" not in path.read_bytes(), path


def test_literal_api_key_is_refused(tmp_path):
    project = spec_project(
        tmp_path,
        "version: 1\nproviders:\n  prod:\n    type: astica\n    api_key: sk-literal\n"
        "models:\n  shapes:\n    classes:\n      circle: {samples: [data/circle/a.png]}\n"
        "      square: {samples: [data/square/b.png]}\n",
    )
    r = run_cli(project, "validate")
    assert r.code == 1
    assert "must come from the environment" in r.err
    assert "sk-literal" not in r.err


def test_missing_spec_and_bad_flags_exit_1(tmp_path):
    r = run_cli(tmp_path, "plan")
    assert r.code == 1 and "modelsync.yaml: no such file" in r.err
    for args, message in [
        (("plan", "--no-such-flag"), "No such option: --no-such-flag"),
        (("frobnicate",), "No such command 'frobnicate'"),
        (("predict",), "Missing argument 'model'"),
        (("apply", "--parallelism", "0"), "Invalid value for '--parallelism'"),
    ]:
        r = run_cli(tmp_path, *args)
        assert r.code == 1, args
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in r.err, r.err
        assert "internal error" not in r.err and "Traceback" not in r.err


def test_validate_schema_and_help_work_from_the_console_script(tmp_path):
    project = copy_quickstart(tmp_path / "qs")
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "-C", str(project), "validate"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "valid (1 model)" in proc.stdout
    r = run_cli(project, "schema")
    assert r.code == 0 and '"models"' in r.out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    project = copy_quickstart(tmp_path_factory.mktemp("trained") / "qs")
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    return project


def test_predict_answers_unseen_images_correctly(trained):
    r = run_cli(trained, "predict", "shapes", *(str(p) for p in sorted((trained / "unseen").glob("*.png"))), "--json")
    assert r.code == 0, r.err
    preds = r.json()
    assert len(preds) == 6
    for p in preds:
        assert 0.0 <= p["confidence"] <= 1.0
    right = sum(Path(p["input"]).name.startswith(p["label"]) for p in preds)
    assert right >= 5, preds


def test_versions_show_the_dataset_digest(trained):
    r = run_cli(trained, "versions", "shapes", "--json")
    assert r.code == 0, r.err
    rows = r.json()
    assert len(rows) == 1
    import json

    lock = json.loads((trained / "modelsync.lock").read_text())
    assert rows[0]["dataset_digest"] == lock["models"]["shapes"]["dataset_digest"]
    assert 0.0 <= rows[0]["metrics"]["accuracy"] <= 1.0
    assert len(rows[0]["version"]) == 15  # YYYYMMDD_HHMMSS


@pytest.mark.parametrize(
    "args,expected",
    [
        (["shapes", "README.md"], "not an image"),
        (["shapes", "nope.png"], "no such file: nope.png"),
        (["ghost", "unseen/circle-00.png"], "no model 'ghost'"),
        (["shapes", "unseen/circle-00.png", "--version", "19990101_000000"], "19990101_000000"),
    ],
)
def test_predict_bad_inputs(trained, args, expected, monkeypatch):
    (trained / "README.md").write_text("not an image")
    monkeypatch.chdir(trained)
    r = run_cli(trained, "predict", *args)
    assert r.code == 1
    assert expected in r.err, r.err
    assert "Traceback" not in r.err


def test_predict_on_urls_that_fail_is_one_clear_line(trained, tmp_path, static_files, monkeypatch):
    web = tmp_path / "web"
    web.mkdir()
    with open(web / "huge.png", "wb") as f:
        f.write((trained / "unseen" / "circle-00.png").read_bytes())
        f.truncate(51 * 2**20)  # past the 50 MB cap that URL sources have too
    base = static_files(web)
    monkeypatch.chdir(trained)
    for url, expected in [(f"{base}/missing.png", "HTTP 404"), (f"{base}/huge.png", "larger than 50 MB")]:
        r = run_cli(trained, "predict", "shapes", url)
        assert r.code == 1 and r.err.strip() == f"Error: cannot fetch {url}: {expected}", r.err


def test_infer_without_waiting_is_refused_on_the_embedded_backend(trained, monkeypatch):
    monkeypatch.chdir(trained)
    r = run_cli(trained, "infer", "shapes", "--sources", "unseen/circle-00.png", "--no-wait")
    assert r.code == 1 and "--no-wait would end the job" in r.err, r.err
    r = run_cli(trained, "infer", "shapes", "--sources", "unseen/circle-00.png", "--json")
    assert r.code == 0 and r.json()["status"] == "Finished" and r.json()["results"][0]["label"] == "circle"


def test_predict_on_an_untrained_model(tmp_path, monkeypatch):
    project = spec_project(
        tmp_path,
        GOOD_HEAD + "      circle: {samples: [data/circle/a.png]}\n      square: {samples: [data/square/b.png]}\n"
        "    training: {auto: false}\n",
    )
    assert run_cli(project, "apply", "--auto-approve").code == 0
    monkeypatch.chdir(project)
    r = run_cli(project, "predict", "shapes", "data/circle/a.png")
    assert r.code == 1
    assert "trained" in r.err.lower()


# -- a full disk under the embedded backend ---------------------------------------------------


class FullDisk:
    """While on, every connection the embedded backend opens finds its disk full: SQLite itself
    answers "database or disk is full" (SQLITE_FULL) as soon as the database file must grow."""

    def __init__(self, monkeypatch):
        from reconciler.local import db

        self._monkeypatch, self._db = monkeypatch, db
        self._opened = opened = db.Database.conn

        def conn(database):
            fresh = getattr(database._local, "conn", None) is None
            c = opened(database)
            if fresh:
                pages = c.execute("PRAGMA page_count").fetchone()[0]
                c.execute(f"PRAGMA max_page_count = {pages}")
            return c

        self._full = conn

    def on(self) -> None:
        self._monkeypatch.setattr(self._db.Database, "conn", self._full)

    def off(self) -> None:
        self._monkeypatch.setattr(self._db.Database, "conn", self._opened)


@pytest.fixture
def full_disk(monkeypatch) -> FullDisk:
    return FullDisk(monkeypatch)


def _one_clear_disk_full_line(err: str, db_file: Path) -> str:
    assert "Traceback" not in err and "internal error" not in err and "OperationalError" not in err, err
    (line,) = [x for x in err.splitlines() if "disk full" in x]
    assert f"disk full writing {db_file}" in line, err
    return line


def test_a_full_disk_during_apply_is_one_clear_line_and_a_rerun_converges(tmp_path, full_disk):
    project = copy_quickstart(tmp_path / "qs")
    spec = project / "modelsync.yaml"
    spec.write_text(spec.read_text().replace("      auto: true\n", "      auto: false\n"))
    assert run_cli(project, "plan").code == 0
    db_file = project / ".modelsync" / "local" / "modelsync.db"
    assert not db_file.exists()  # a plan creates nothing
    from reconciler.local.service import LocalService

    LocalService(db_file.parent).close()  # the database exists, with room for what it holds
    assert db_file.is_file()
    full_disk.on()

    r = run_cli(project, "apply", "--auto-approve", "--parallelism", "1")
    assert r.code == 1, r.out
    line = _one_clear_disk_full_line(r.err, db_file)
    assert line.startswith("Error: upload_sample shapes/"), line  # names the sample that did not fit

    full_disk.off()  # room again
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    assert run_cli(project, "plan", "--detailed-exitcode").code == 0


def test_a_full_disk_when_starting_an_inference_job(trained, full_disk, monkeypatch):
    monkeypatch.chdir(trained)
    db_file = trained / ".modelsync" / "local" / "modelsync.db"
    full_disk.on()
    image = str(trained / "unseen" / "circle-00.png")
    r = run_cli(trained, "infer", "shapes", *(["--sources", image] * 60))  # its row needs new pages
    assert r.code == 1, r.out
    line = _one_clear_disk_full_line(r.err, db_file)
    assert line.startswith("Error: infer shapes: "), line


@pytest.mark.parametrize("body", ["[]", "null", '{"format_version": 1, "serial": 4, "models": []}',
                                  '{"format_version": 1, "models": {"shapes": 5}}'])
def test_a_state_file_of_the_wrong_shape_is_one_clear_line(tmp_path, body):
    project = copy_quickstart(tmp_path / "qs")
    (project / ".modelsync").mkdir()
    (project / ".modelsync" / "state.json").write_text(body)
    r = run_cli(project, "plan")
    assert r.code == 1 and "internal error" not in r.err, r.err
    assert [line for line in r.err.splitlines() if line.startswith("Error")] == [r.err.splitlines()[-1]]
    assert "state.json: " in r.err.splitlines()[-1]


@pytest.mark.parametrize("body", ["[]", "null", '{"version": 1, "models": {"shapes": 3}}'])
def test_a_lock_file_of_the_wrong_shape_is_one_clear_line(tmp_path, body):
    project = copy_quickstart(tmp_path / "qs")
    (project / "modelsync.lock").write_text(body)
    r = run_cli(project, "plan", "--locked")
    assert r.code == 1 and "modelsync.lock: " in r.err and "internal error" not in r.err, r.err


def test_a_saved_plan_that_is_not_a_plan_is_refused_and_nothing_changes(tmp_path):
    project = copy_quickstart(tmp_path / "qs")
    planfile = project / "plan.json"
    assert run_cli(project, "plan", "--out", str(planfile)).code == 0
    edited = planfile.read_text().replace('"op": "create_model"', '"op": "explode"')
    for body in ("[]", "null", edited):
        planfile.write_text(body)
        r = run_cli(project, "apply", str(planfile))
        assert r.code == 1 and "not a modelsync plan" in r.err and "internal error" not in r.err, r.err
    r = run_cli(project, "apply", str(project / "data"))
    assert r.code == 1 and "cannot read the plan" in r.err, r.err
    assert not (project / ".modelsync" / "state.json").exists()
