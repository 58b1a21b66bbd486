"""status reports training drift exactly when plan would train, and counts in good English
(CLI, embedded backend)."""

from __future__ import annotations

from pathlib import Path

from tests.cli_helpers import make_png, run_cli


def set_learning_rate(project: Path, value: str) -> None:
    spec = project / "modelsync.yaml"
    text = spec.read_text()
    start = text.index("learning_rate: ") + len("learning_rate: ")
    spec.write_text(text[:start] + value + text[text.index("}", start) :])


def train_reason(project: Path) -> str | None:
    ops = run_cli(project, "plan", "--json").json()["operations"]
    return next((o["reason"] for o in ops if o["op"] == "train"), None)


def test_a_config_change_is_training_drift_until_applied(applied: Path):
    assert run_cli(applied, "status").code == 0
    set_learning_rate(applied, "0.3")
    reason = train_reason(applied)
    assert reason is not None and reason.endswith("learning_rate: 0.1 -> 0.3")

    r = run_cli(applied, "status")
    assert r.code == 2, r.out + r.err
    assert r.out.splitlines() == [
        "shapes: drifted",
        f"  training: config changed since the last trained version ({reason})",
        "Drift detected.",
    ]
    training = run_cli(applied, "status", "--json").json()["models"]["shapes"]["training"]
    assert training == {
        "never_trained": False,
        "dataset_changed": False,
        "config_changed": True,
        "last_run": None,
        "reason": reason,
    }

    assert run_cli(applied, "apply", "--auto-approve").code == 0
    r = run_cli(applied, "status")
    assert r.code == 0 and r.out.splitlines() == ["shapes: in sync", "In sync."], r.out


def test_a_failed_training_run_is_drift_and_says_so(applied: Path):
    set_learning_rate(applied, "1.0e+308")  # the embedded trainer diverges: the run fails
    r = run_cli(applied, "apply", "--auto-approve")
    assert r.code == 1 and "training diverged" in r.err, r.out + r.err
    r = run_cli(applied, "status")
    assert r.code == 2, r.out + r.err
    assert "  training: config changed since the last trained version (" in r.out
    assert "  training: the last training run failed" in r.out
    assert run_cli(applied, "status", "--json").json()["models"]["shapes"]["training"]["last_run"] == "failed"


def test_training_is_drift_only_when_plan_would_train(applied: Path):
    spec = applied / "modelsync.yaml"
    spec.write_text(spec.read_text().replace("auto: true", "auto: false"))
    set_learning_rate(applied, "0.3")
    assert train_reason(applied) is None
    ops = run_cli(applied, "plan", "--json").json()["operations"]
    configure = [o for o in ops if o["op"] == "configure"]
    assert len(configure) == 1  # without auto training, plan keeps the stored config declared
    r = run_cli(applied, "status", "--json")
    entry = r.json()["models"]["shapes"]
    assert entry["training"] is None and entry["config"] == configure[0]["changes"]
    r = run_cli(applied, "status")
    assert r.code == 2 and "training:" not in r.out
    assert "  config differs from the remote's: " + "; ".join(configure[0]["changes"]) in r.out.splitlines()

    spec.write_text(spec.read_text().replace("auto: false", "auto: true"))
    assert run_cli(applied, "status").code == 2


def test_status_counts_in_the_singular_and_names_the_dataset_change(applied: Path):
    from reconciler.local.service import LocalService

    make_png(applied / "data" / "circle" / "late.png", "circle", seed=77)
    service = LocalService(applied / ".modelsync" / "local")
    try:
        model = next(m for m in service.list_models("local") if m.title == "Shapes")
        victim = service.get_model("local", model.id).classes[0].samples[0]
        service.delete_sample("local", victim.id)
        data = make_png(applied.parent / "theirs.png", "square", seed=4321).read_bytes()
        service.add_sample("local", model.id, "square", data, uid="someone-elses")
    finally:
        service.close()
    reason = train_reason(applied)
    assert reason is not None and reason.startswith("dataset ")

    r = run_cli(applied, "status")
    assert r.code == 2
    assert r.out.splitlines() == [
        "shapes: drifted",
        "  2 declared samples not on the remote",
        f"  1 sample removed outside modelsync: {victim.uid}",
        "  1 sample added outside modelsync (unmanaged): someone-elses",
        f"  training: dataset changed since the last trained version ({reason})",
        "Drift detected.",
    ]
    (applied / "data" / "circle" / "late.png").unlink()
    assert "  1 declared sample not on the remote" in run_cli(applied, "status").out
