"""The AnnoLab provider: batch inference on an existing model against `modelsync serve` on
loopback (sources uploaded, job polled, predictions read from the output layer), the refusals
of what AnnoLab does not let modelsync do, keys and the "Model Run" permission, and
`modelsync infer` end to end through the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.local.serve.auth import PERM_UPLOAD, PERM_VIEW, KeyInfo
from reconciler.model import ImageInput, InferenceStatus
from reconciler.providers import make_provider
from reconciler.providers.annolab import AnnoLabProvider, predictions_from
from reconciler.providers.base import NotFound, NotSupported, ProviderConfig, ProviderError
from tests.cli_helpers import copy_quickstart, run_cli

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "quickstart" / "data"
UNSEEN = REPO / "examples" / "quickstart" / "unseen"
KEY_A, KEY_B, KEY_NORUN = "annolab-key-a-1", "annolab-key-b-2", "annolab-key-norun-3"
KEYS = {
    KEY_A: KeyInfo(owner="alice"),
    KEY_B: KeyInfo(owner="bob"),
    KEY_NORUN: KeyInfo(owner="alice", permissions=frozenset({PERM_VIEW, PERM_UPLOAD})),
}
TITLE = "Shapes Classifier"


def provider(base_url: str, key: str = KEY_A, **options) -> AnnoLabProvider:
    options.setdefault("backoff_base", 0.02)
    options.setdefault("group_name", "Company Name")
    options.setdefault("project", "My Project")
    options.setdefault("output_layer", "Gold Set")
    cfg = ProviderConfig(name="al", type="annolab", api_key=key, base_url=base_url, options=options)
    p = make_provider(cfg)
    assert isinstance(p, AnnoLabProvider)
    return p


def trained_model(service, owner: str = "alice") -> int:
    m = service.create_model(owner, TITLE)
    for kind in ("circle", "square"):
        for f in sorted((DATA / kind).glob("*.png")):
            service.add_sample(owner, m.id, kind, f.read_bytes())
    job = service.wait_training(owner, service.start_training(owner, m.id).id, timeout=60)
    assert job.state == "trained", job
    return m.id


def run_to_end(p: AnnoLabProvider, job_id: str) -> InferenceStatus:
    deadline = time.monotonic() + 60
    status = p.inference_status(job_id)
    while not status.finished and time.monotonic() < deadline:
        time.sleep(0.05)
        status = p.inference_status(job_id)
    return status


@pytest.fixture
def server(serve_thread):
    s = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None)
    trained_model(s.service)
    return s


def test_inference_cycle_against_serve(server):
    p = provider(server.base_url)
    try:
        (summary,) = p.list_models()
        assert summary.title == TITLE
        model = p.view_model(summary.remote_id)
        assert model.title == TITLE and model.samples == [] and len(model.versions) == 1
        with pytest.raises(NotSupported, match="AnnoLab"):
            p.create_model("new", "vision", "classification", ())
        with pytest.raises(NotFound):
            p.view_model("999")

        files = sorted(UNSEEN.glob("*.png"))
        images = [ImageInput(name=f.name, data=f.read_bytes()) for f in files]
        job = p.start_inference(summary.remote_id, None, images)
        status = run_to_end(p, job)
        assert status.state == "Finished" and (status.done, status.total) == (6, 6) and status.error is None
        assert [r.input for r in status.results] == [f.name for f in files]
        for r in status.results:
            assert r.label == r.input.split("-")[0] and 0.5 < r.confidence <= 1.0 and r.scores

        # a second job in the same project and layer: the project is reused, the version pinned
        job2 = p.start_inference(summary.remote_id, model.versions[0].version, images[:1])
        status2 = run_to_end(p, job2)
        assert [r.input for r in status2.results] == [files[0].name]
        with pytest.raises(ProviderError, match="not found"):
            p.start_inference(summary.remote_id, "19990101_000000", images[:1])
    finally:
        p.close()

    # a fresh provider (another process, say) polls a job it did not start
    q = provider(server.base_url)
    try:
        status = q.inference_status(job)
        assert status.state == "Finished" and [r.label for r in status.results][:3] == ["circle"] * 3
    finally:
        q.close()


def test_keys_and_model_run_permission(server):
    a, b, norun, bad = (provider(server.base_url, k) for k in (KEY_A, KEY_B, KEY_NORUN, "wrong-key"))
    try:
        mid = a.list_models()[0].remote_id
        image = [ImageInput(name="c.png", data=(UNSEEN / "circle-00.png").read_bytes())]
        with pytest.raises(ProviderError) as exc:
            bad.list_models()
        assert "(HTTP 401)" in str(exc.value) and "wrong-key" not in str(exc.value)
        with pytest.raises(ProviderError) as exc:
            norun.start_inference(mid, None, image)
        assert exc.value.status == 400 and "Model Run" in str(exc.value)  # the doc's "could not be started"
        job = a.start_inference(mid, None, image)
        with pytest.raises(NotFound):
            b.inference_status(job)  # another key's job
        with pytest.raises(NotFound):
            norun.inference_status(job)
        assert b.list_models() == []
        with pytest.raises(ProviderError, match="modelIdentifier"):
            b.start_inference(mid, None, image)
    finally:
        for p in (a, b, norun, bad):
            p.close()
    nogroup = provider(server.base_url, group_name=None)
    try:
        with pytest.raises(ProviderError, match="group_name"):
            nogroup.start_inference("1", None, [ImageInput(name="x", data=b"x")])
    finally:
        nogroup.close()


def test_predictions_from_layer_annotations():
    annotations = [
        {"sourceId": 1, "value": "cat", "type": "cat", "confidence": 0.8, "scores": {"cat": 0.8, "dog": 0.2}},
        {"sourceId": 2, "value": "dog", "type": "dog", "confidence": 0.6, "bbox": [1, 2, 3, 4]},
        {"sourceId": 2, "value": "cat", "type": "cat", "confidence": 0.9, "bbox": [5, 6, 7, 8]},
        {"sourceId": 99, "value": "x", "confidence": 1.0},
    ]
    preds = predictions_from(annotations, [1, 2, 3], {1: "a.png", 2: "b.png"})
    assert [(p.input, p.label) for p in preds] == [("a.png", "cat"), ("b.png", "cat"), ("3", None)]
    assert preds[0].scores == {"cat": 0.8, "dog": 0.2} and len(preds[1].boxes) == 2


def test_modelsync_infer_through_the_cli(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOLAB_TEST_KEY", KEY_A)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "modelsync.yaml").write_text(
        "version: 1\n"
        "providers:\n"
        "  al:\n"
        "    type: annolab\n"
        "    api_key: ${env:ANNOLAB_TEST_KEY}\n"
        f"    base_url: {server.base_url}\n"
        "    group_name: Company Name\n"
        "    project: My Project\n"
        "    output_layer: Gold Set\n"
        "models:\n"
        "  shapes:\n"  # a model built in AnnoLab: named by its title, no classes, samples or training
        f"    title: {TITLE}\n"
    )
    r = run_cli(project, "validate")
    assert (r.code, r.out.strip()) == (0, "modelsync.yaml: valid (1 model)."), r.err
    r = run_cli(project, "plan", "--detailed-exitcode", "--json")
    assert r.code == 0 and r.json()["operations"] == [], r.out + r.err  # nothing to upload or train, ever

    sources = [str(UNSEEN / "circle-01.png"), str(UNSEEN / "square-02.png")]
    r = run_cli(project, "infer", "shapes", "--sources", sources[0], "--sources", sources[1], "--json")
    assert r.code == 0, r.err
    body = r.json()
    assert body["status"] == "Finished" and (body["done"], body["total"]) == (2, 2)
    assert [(x["input"], x["label"]) for x in body["results"]] == [(sources[0], "circle"), (sources[1], "square")]
    assert KEY_A not in r.out + r.err

    # start without waiting, then follow the job by its id until its results can be read
    r = run_cli(project, "infer", "shapes", "--sources", sources[1], "--no-wait", "--json")
    assert r.code == 0 and r.json()["status"] in ("Queued", "Running", "Finished"), r.out + r.err
    job_id = r.json()["job_id"]
    r = run_cli(project, "infer", "shapes", "--job", job_id, "--json")
    assert r.code == 0, r.err
    assert (r.json()["job_id"], r.json()["status"]) == (job_id, "Finished")
    assert [(x["input"], x["label"]) for x in r.json()["results"]] == [(sources[1], "square")]
    r = run_cli(project, "infer", "shapes", "--job", job_id, "--sources", sources[0])
    assert r.code == 1 and "either --sources" in r.err


def test_annolab_models_are_never_created_or_deleted(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOLAB_TEST_KEY", KEY_A)
    project = tmp_path / "proj"
    project.mkdir()
    head = (
        "version: 1\nproviders:\n  al:\n    type: annolab\n    api_key: ${env:ANNOLAB_TEST_KEY}\n"
        f"    base_url: {server.base_url}\n    group_name: Company Name\n    project: My Project\n"
        "    output_layer: Gold Set\nmodels:\n"
    )
    (project / "modelsync.yaml").write_text(head + "  ghost:\n    title: Not In AnnoLab\n")
    r = run_cli(project, "plan")
    assert r.code == 1 and "cannot create models: create it in the vendor's own tools first" in r.err, r.out + r.err
    assert "create_model" not in r.out

    (project / "modelsync.yaml").write_text(head + f"  shapes:\n    title: {TITLE}\n")
    r = run_cli(project, "destroy", "--auto-approve")
    assert r.code == 0 and "cannot delete models; left as it is" in r.out + r.err, r.out + r.err
    r = run_cli(project, "infer", "shapes", "--sources", str(UNSEEN / "circle-01.png"), "--json")
    assert r.code == 0 and r.json()["status"] == "Finished"  # still there


def test_infer_end_to_end_through_the_cli_against_a_serve_process(serve_process, tmp_path, monkeypatch):
    """The whole flow: a model trained on the vendor's side (here by `modelsync apply` through
    serve's astica API with the same key, standing in for AnnoLab's own tools), then a spec that
    names it on an annolab provider with no classes: validate, an empty plan, `modelsync infer`
    (JSON and text) against a real `modelsync serve` subprocess, and the clear refusals."""
    server = serve_process(keys={KEY_A: {"owner": "alice"}}, rate_limit=None, total_rate_limit=None)
    monkeypatch.setenv("E2E_VENDOR_KEY", KEY_A)
    monkeypatch.setenv("NO_COLOR", "1")
    vendor = f"api_key: '${{env:E2E_VENDOR_KEY}}', base_url: '{server.base_url}'"

    trainer = copy_quickstart(tmp_path / "trained-elsewhere")
    spec = (trainer / "modelsync.yaml").read_text()
    astica = f"{{type: astica, {vendor}, rate_limit: 6000}}"  # the documented 90 a minute would take 35 s
    spec = spec.replace("version: 1\n", f"version: 1\nproviders:\n  vendor: {astica}\n")
    (trainer / "modelsync.yaml").write_text(spec.replace("      config: {steps: 300, learning_rate: 0.1}\n", ""))
    r = run_cli(trainer, "apply", "--auto-approve")
    assert r.code == 0, r.out + r.err
    r = run_cli(trainer, "versions", "shapes", "--json")  # astica reports no metrics: the key is still there
    assert r.code == 0 and len(r.json()) == 1 and "accuracy" in r.json()[0]["metrics"], r.out

    project = tmp_path / "inference"
    project.mkdir()
    (project / "modelsync.yaml").write_text(
        "version: 1\n"
        "providers:\n"
        f"  al: {{type: annolab, {vendor}, group_name: Acme, project: Inbox, output_layer: Predictions}}\n"
        "models:\n"
        "  shapes: {title: Shapes}\n"
        "  missing: {title: Never Built}\n"
    )
    assert run_cli(project, "validate").code == 0
    r = run_cli(project, "plan", "--detailed-exitcode", "--target", "shapes")
    assert r.code == 0, r.out + r.err

    sources = sorted(str(f) for f in UNSEEN.glob("*.png"))
    args = [a for src in sources for a in ("--sources", src)]
    r = run_cli(project, "infer", "shapes", *args, "--json")
    assert r.code == 0, r.err
    body = r.json()
    assert (body["status"], body["done"], body["total"], body["error"]) == ("Finished", 6, 6, None)
    assert [x["input"] for x in body["results"]] == sources
    assert [x["label"] for x in body["results"]] == [Path(s).name.split("-")[0] for s in sources]
    assert all(0.5 < x["confidence"] <= 1.0 for x in body["results"])

    r = run_cli(project, "infer", "shapes", "--sources", sources[0])
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("job ") and lines[0].endswith(": Finished (1/1)")
    assert lines[1].startswith(f"  {sources[0]}: circle (")
    assert KEY_A not in r.out + r.err

    r = run_cli(project, "infer", "missing", "--sources", sources[0])
    assert r.code == 1 and "Traceback" not in r.err
    assert "Never Built" in r.err and "annolab" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    r = run_cli(project, "predict", "shapes", sources[0])
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1 and "infer" in r.err, r.err
