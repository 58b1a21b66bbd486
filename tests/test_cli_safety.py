"""What a saved or printed plan may carry out, and what `--out` and `--target` may name.
Through the CLI, on the embedded backend, in temporary copies of the quickstart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import copy_quickstart, run_cli

PROTECTED = "    lifecycle:\n      prevent_destroy: true\n"


@pytest.fixture
def protected(tmp_path: Path) -> Path:
    """The quickstart with prevent_destroy, applied: the model exists and the state records the rule."""
    project = copy_quickstart(tmp_path / "quickstart")
    spec = project / "modelsync.yaml"
    spec.write_text(spec.read_text() + PROTECTED)
    assert run_cli(project, "apply", "--auto-approve").code == 0
    return project


def assert_model_intact(project: Path, spec_text: str) -> None:
    """With the spec as it was applied, the plan is empty: the model and its samples are there."""
    (project / "modelsync.yaml").write_text(spec_text)
    r = run_cli(project, "plan", "--detailed-exitcode")
    assert r.code == 0 and "No changes" in r.out, (r.out, r.err)


@pytest.mark.parametrize(
    "change, refusal",
    [
        (lambda text: "version: 1\nmodels: {}\n", "refusing to delete the model"),
        (lambda text: text.replace("title: Shapes", "title: Shapes v2"), "refusing to replace the model"),
    ],
    ids=["dropped from the spec", "title changed"],
)
def test_a_plan_that_deletes_a_protected_model_is_not_saved_and_a_printed_one_is_refused(protected, change, refusal):
    spec = protected / "modelsync.yaml"
    applied_text = spec.read_text()
    assert "title: Shapes" in applied_text
    spec.write_text(change(applied_text))

    r = run_cli(protected, "plan", "--out", "saved.json")
    assert r.code == 1 and refusal in r.err
    assert "--out" in r.err and "not saved: the plan has errors" in r.err
    assert "Saved the plan" not in r.out and not (protected / "saved.json").exists()

    # `plan --json` still prints the plan (exit 1); carried out as a plan file, it is refused.
    r = run_cli(protected, "plan", "--json")
    assert r.code == 1 and '"delete_model"' in r.out
    printed = json.loads(r.out)
    assert printed["errors"] == [f"shapes: lifecycle.prevent_destroy is set; {refusal}"]
    (protected / "printed.json").write_text(r.out)
    r = run_cli(protected, "apply", "printed.json")
    assert r.code == 1 and f"shapes: lifecycle.prevent_destroy is set; {refusal}" in r.err
    assert "printed.json: the plan has errors" in r.err and "Apply complete" not in r.out
    # With its errors edited out, the rule is checked again against the spec and the state.
    (protected / "edited.json").write_text(json.dumps({**printed, "errors": []}))
    r = run_cli(protected, "apply", "edited.json")
    assert r.code == 1 and r.err.strip() == f"Error: shapes: lifecycle.prevent_destroy is set; {refusal}"
    assert_model_intact(protected, applied_text)


def test_a_saved_plan_keeps_its_own_targets(tmp_path: Path):
    project = copy_quickstart(tmp_path / "quickstart")
    assert run_cli(project, "plan", "--out", "saved.json").code == 0
    r = run_cli(project, "apply", "saved.json", "--target", "shapes")
    assert r.code == 1 and "--target: not with a saved plan" in r.err
    assert not (project / ".modelsync" / "state.json").exists()  # nothing was done


def test_destroy_can_target_a_model_the_spec_no_longer_declares(tmp_path: Path):
    project = copy_quickstart(tmp_path / "quickstart")
    assert run_cli(project, "apply", "--auto-approve").code == 0
    (project / "modelsync.yaml").write_text("version: 1\nmodels: {}\n")
    r = run_cli(project, "destroy", "--auto-approve", "--target", "nosuch")
    assert r.code == 1 and "--target: no model 'nosuch'" in r.err
    r = run_cli(project, "destroy", "--auto-approve", "--target", "shapes")
    assert r.code == 0, r.err
    assert "Destroy complete: 1 model deleted." in r.out
    r = run_cli(project, "destroy", "--auto-approve")
    assert r.code == 0 and "Nothing to destroy" in r.out


@pytest.mark.parametrize("name", ["modelsync.yaml", "modelsync.lock"])
def test_plan_out_never_overwrites_the_projects_own_files(tmp_path: Path, name: str):
    project = copy_quickstart(tmp_path / "quickstart")
    assert run_cli(project, "apply", "--auto-approve").code == 0
    before = (project / name).read_bytes()
    r = run_cli(project, "plan", "--out", name)
    assert r.code == 1 and f"that is the project's {name}" in r.err
    assert (project / name).read_bytes() == before


def test_result_lines_count_in_the_singular_and_plural(tmp_path: Path):
    project = copy_quickstart(tmp_path / "quickstart")
    assert run_cli(project, "apply", "--auto-approve").code == 0
    circle = sorted((project / "data" / "circle").glob("*.png"))
    circle[0].unlink()
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    assert "1 sample deleted" in r.out and "1 samples" not in r.out


def test_predict_names_the_input_and_the_model_in_its_refusals(tmp_path: Path):
    project = copy_quickstart(tmp_path / "quickstart")
    spec = project / "modelsync.yaml"
    spec.write_text(spec.read_text().replace("auto: true", "auto: false"))
    assert run_cli(project, "apply", "--auto-approve").code == 0
    (project / "notes.png").write_text("not an image at all")
    r = run_cli(project, "predict", "shapes", "unseen/circle-00.png", "notes.png")
    assert r.code == 1 and r.err.strip() == "Error: notes.png: not an image (PNG, JPEG, GIF, BMP or WebP)"
    r = run_cli(project, "predict", "shapes", "unseen/circle-00.png")
    assert r.code == 1 and "model 'shapes': not trained yet" in r.err, r.err


def test_protecting_a_model_and_changing_its_title_in_one_change_does_not_replace_it(tmp_path: Path):
    project = copy_quickstart(tmp_path / "quickstart")
    assert run_cli(project, "apply", "--auto-approve").code == 0  # not protected yet
    spec = project / "modelsync.yaml"
    applied_text = spec.read_text()
    spec.write_text(applied_text.replace("title: Shapes", "title: Shapes v2") + PROTECTED)
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 1 and "shapes: lifecycle.prevent_destroy is set; refusing to replace the model" in r.err
    assert_model_intact(project, applied_text)


def test_plan_out_never_writes_into_the_state_directory_and_a_plan_is_never_read_as_state(tmp_path: Path):
    project = copy_quickstart(tmp_path / "quickstart")
    assert run_cli(project, "apply", "--auto-approve").code == 0
    state = project / ".modelsync" / "state.json"
    before = state.read_bytes()
    r = run_cli(project, "plan", "--out", ".modelsync/state.json")
    assert r.code == 1 and "inside .modelsync/" in r.err and state.read_bytes() == before

    assert run_cli(project, "plan", "--out", "saved.json").code == 0
    state.write_bytes((project / "saved.json").read_bytes())  # copied over by hand
    r = run_cli(project, "plan")
    assert r.code == 1 and "a saved plan, not a modelsync state" in r.err


def test_apply_and_destroy_without_a_spec_leave_nothing_behind(tmp_path: Path):
    for command in ("apply", "destroy"):
        r = run_cli(tmp_path, command, "--auto-approve")
        assert r.code == 1 and "modelsync.yaml: no such file" in r.err
    assert list(tmp_path.iterdir()) == []  # no .modelsync/state.lock


def test_serve_on_a_port_in_use_is_one_error_line_and_creates_nothing(tmp_path: Path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = run_cli(tmp_path, "serve", "--port", port, "--data", "srv", "--key", "k")
    assert r.code == 1 and r.err.startswith(f"Error: --host 127.0.0.1 --port {port}: cannot listen there")
    assert len(r.err.strip().splitlines()) == 1 and not (tmp_path / "srv").exists()
    (tmp_path / "file").write_text("x")
    r = run_cli(tmp_path, "serve", "--port", "0", "--data", "file", "--key", "k")
    assert r.code == 1 and r.err.strip().endswith("file: not a directory")
