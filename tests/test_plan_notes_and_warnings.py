"""What plan says besides its operations: notes, warnings and train reasons (CLI, embedded backend)."""

from __future__ import annotations

from pathlib import Path

from tests.cli_helpers import make_png, run_cli


def edit_spec(project: Path, old: str, new: str) -> None:
    spec = project / "modelsync.yaml"
    text = spec.read_text()
    assert old in text
    spec.write_text(text.replace(old, new))


def add_foreign_sample(project: Path, uid: str) -> None:
    """A sample someone added on the remote, not through modelsync."""
    from reconciler.local.service import LocalService

    service = LocalService(project / ".modelsync" / "local")
    try:
        model = next(m for m in service.list_models("local") if m.title == "Shapes")
        data = make_png(project.parent / f"{uid}.png", "circle", seed=1234).read_bytes()
        service.add_sample("local", model.id, "circle", data, uid=uid)
    finally:
        service.close()


def test_prune_none_reports_undeclared_managed_samples_as_kept_not_unmanaged(applied: Path):
    edit_spec(
        applied,
        "      config: {steps: 300, learning_rate: 0.1}\n",
        "      config: {steps: 300, learning_rate: 0.1}\n    lifecycle: {prune: none}\n",
    )
    (applied / "data" / "circle" / "circle-00.png").unlink()
    r = run_cli(applied, "plan")
    assert r.code == 0, r.err
    assert "Note: shapes has 1 managed sample no longer declared; kept (prune: none)." in r.out
    assert "did not upload" not in r.out
    report = run_cli(applied, "plan", "--json").json()
    assert report["unmanaged"] == {} and report["no_longer_declared"] == {"shapes": 1}
    assert not [o for o in report["operations"] if o["op"] == "delete_sample"]

    add_foreign_sample(applied, "someone-elses")
    r = run_cli(applied, "plan")
    assert "Note: shapes has 1 remote sample modelsync did not upload; left alone." in r.out
    assert "Note: shapes has 1 managed sample no longer declared; kept (prune: none)." in r.out
    report = run_cli(applied, "plan", "--json").json()
    assert report["unmanaged"] == {"shapes": 1} and report["no_longer_declared"] == {"shapes": 1}


def test_a_mass_delete_is_in_the_json_warnings_and_printed_once(applied: Path):
    for p in (
        sorted((applied / "data" / "square").glob("*.png"))[:20]
        + sorted((applied / "data" / "circle").glob("*.png"))[:8]
    ):
        p.unlink()
    warning = "shapes: this plan removes 28 of 48 samples; apply needs --allow-mass-delete"
    assert run_cli(applied, "plan", "--json").json()["warnings"] == [warning]
    r = run_cli(applied, "plan")
    assert r.out.count("removes 28 of 48") == 1 and f"Warning: {warning}" in r.out, r.out


def test_train_reason_names_both_a_dataset_and_a_config_change(applied: Path):
    make_png(applied / "data" / "circle" / "late.png", "circle", seed=77)
    edit_spec(applied, "learning_rate: 0.1}", "learning_rate: 0.3}")
    ops = run_cli(applied, "plan", "--json").json()["operations"]
    (train,) = [o for o in ops if o["op"] == "train"]
    dataset, config = train["reason"].split("; ")
    assert dataset.startswith("dataset sha256:") and dataset.endswith(", 1 sample added")
    assert config.startswith("config sha256:") and config.endswith(": learning_rate: 0.1 -> 0.3")
    assert train["previous_dataset_digest"] != train["dataset_digest"]
    assert train["previous_config_digest"] != train["config_digest"]
    r = run_cli(applied, "plan")
    assert f"~ train shapes ({train['reason']})" in r.out


def test_a_model_type_change_is_named_in_the_train_reason(applied: Path):
    spec = applied / "modelsync.yaml"
    text = spec.read_text()
    assert "model_type: small" in text
    spec.write_text(text.replace("model_type: small", "model_type: medium"))
    ops = run_cli(applied, "plan", "--json").json()["operations"]
    (train,) = [o for o in ops if o["op"] == "train"]
    assert train["reason"].endswith(": model_type: 'small' -> 'medium'"), train["reason"]
