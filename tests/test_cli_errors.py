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
    r = run_cli(tmp_path, "plan", "--no-such-flag")
    assert r.code == 1 and "No such option" in r.err


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
