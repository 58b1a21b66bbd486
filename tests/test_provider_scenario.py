"""The Scenario provider: the whole cycle against `modelsync serve` on loopback (create, upload
by URL, captions, remove, configure, train, stop), re-sent uploads after lost answers, and keys."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.local.serve import FaultConfig
from reconciler.local.serve.auth import KeyInfo
from reconciler.model import TrainRequest, UploadItem, sha256_digest
from reconciler.providers import make_provider
from reconciler.providers.base import NotFound, NotSupported, ProviderConfig, ProviderError
from reconciler.providers.scenario import ScenarioProvider, from_params, to_params
from tests.cli_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "quickstart" / "data"
KEY_A, KEY_B, KEY_TEAM = "scenario-key-a-1", "scenario-key-b-2", "scenario-key-team-3"
KEYS = {
    KEY_A: KeyInfo(owner="alice"),
    KEY_B: KeyInfo(owner="bob"),
    KEY_TEAM: KeyInfo(owner="carol", team_id="team_abc123", project_ids=frozenset({"proj_xyz789"})),
}


def provider(base_url: str, key: str = KEY_A, **options) -> ScenarioProvider:
    options.setdefault("backoff_base", 0.02)
    cfg = ProviderConfig(name="sc", type="scenario", api_key=key, base_url=base_url, options=options)
    p = make_provider(cfg)
    assert isinstance(p, ScenarioProvider)
    return p


def item(path: Path, base: str, class_name: str | None = None, caption: str | None = None) -> UploadItem:
    data = path.read_bytes()
    kind = path.parent.name
    return UploadItem(
        uid=f"u-{path.stem}",
        class_name=class_name or kind,
        digest=sha256_digest(data),
        size=len(data),
        filename=path.name,
        read=path.read_bytes,
        url=f"{base}/{kind}/{path.name}",
        caption=caption,
    )


def files(kind: str, n: int) -> list[Path]:
    return sorted((DATA / kind).glob("*.png"))[:n]


def wait_done(p: ScenarioProvider, mid: str, handle: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    status = p.training_status(mid, handle)
    while not status.done and time.monotonic() < deadline:
        time.sleep(0.1)
        status = p.training_status(mid, handle)
    return status


@pytest.fixture
def server(serve_thread):
    return serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None, allow_private_urls=True)


def test_full_cycle_against_serve(server, static_files):
    base = static_files(DATA)
    p = provider(server.base_url)
    try:
        assert p.list_models() == []
        mid = p.create_model("Style", "vision", "classification", ("art",))
        assert mid.startswith("model_") and [m.title for m in p.list_models()] == ["Style"]

        first = item(files("circle", 1)[0], base, "style", caption="a dark disc")
        rid = p.upload_sample(mid, first)
        assert rid and rid.startswith("ti_")
        assert p.upload_sample(mid, first) == rid  # a second upload is refused by Scenario: same image returned
        others = [p.upload_sample(mid, item(f, base, "style")) for f in files("circle", 4)[1:]]
        with pytest.raises(NotSupported, match="URL"):
            p.upload_sample(mid, UploadItem("x", "style", "", 1, "x.png", lambda: b"", url=None))

        model = p.view_model(mid)
        assert (model.title, model.tags, set(model.classes)) == ("Style", ("art",), {"style"})
        by_id = {s.remote_id: s for s in model.samples}
        assert set(by_id) == {rid, *others}
        assert by_id[rid].caption == "a dark disc" and by_id[rid].uid is None and by_id[rid].url == first.url
        assert by_id[rid].digest == first.digest

        p.update_sample(mid, by_id[others[0]], "a caption", ())
        p.delete_sample(mid, by_id[others[1]])
        p.delete_sample(mid, by_id[others[1]])  # already gone: no error
        model = p.view_model(mid)
        assert {s.remote_id: s.caption for s in model.samples} == {rid: "a dark disc", others[0]: "a caption",
                                                                   others[2]: None}

        p.configure(mid, {"steps": 80, "learning_rate": 0.05})
        assert p.view_model(mid).config == {"steps": 80, "learning_rate": 0.05}  # round trip: nothing to plan

        # one class cannot train on the embedded trainer: the vendor's refusal comes through
        with pytest.raises(ProviderError, match="two classes"):
            p.start_training(mid, TrainRequest("small", None, {}, "", ""))
        for f in files("square", 4):
            p.upload_sample(mid, item(f, base, "square"))
        # the run's config travels with it (sent by configure before start)
        handle = p.start_training(mid, TrainRequest("small", None, {"steps": 90}, "", ""))
        status = wait_done(p, mid, handle)
        assert status.state == "trained", status
        assert status.version is not None and status.version.metrics["steps"] == 90
        assert p.view_model(mid).config == {"steps": 90}
        assert [v.version for v in p.list_versions(mid)] == [status.version.version]
        assert p.view_model(mid).versions[0].dataset_digest == status.version.dataset_digest

        # a long run, stopped
        long_run = TrainRequest("small", None, {"steps": 100_000, "learning_rate": 0.01}, "", "")
        handle = p.start_training(mid, long_run)
        assert p.view_model(mid).training_status in ("queued", "training")
        with pytest.raises(ProviderError, match="already training"):
            p.start_training(mid, long_run)
        p.stop_training(mid, handle)
        assert wait_done(p, mid, handle).state == "canceled"
        p.stop_training(mid, handle)  # not training any more: no error

        p.delete_model(mid)
        assert p.list_models() == []
        p.delete_model(mid)
        with pytest.raises(NotFound):
            p.view_model(mid)
    finally:
        p.close()


def test_lost_answers_are_resent_safely(serve_thread, static_files):
    faults = FaultConfig(drop_rate=0.35, seed=2)
    server = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None, allow_private_urls=True, faults=faults)
    base = static_files(DATA)
    p = provider(server.base_url, max_retries=8)
    try:
        mid = p.create_model("Lossy", "vision", "classification", ())
        items = [item(f, base, "style") for f in files("square", 8)]
        ids = [p.upload_sample(mid, it) for it in items]
        assert p.stats.retries > 0
        stored = [s for c in server.service.get_model("alice", int(mid.removeprefix("model_"))).classes
                  for s in c.samples]
        assert len(stored) == 8 and sorted(f"ti_{s.id}" for s in stored) == sorted(ids)
        assert [m.title for m in p.list_models()] == ["Lossy"]
    finally:
        p.close()


def test_keys_and_scope(server):
    a, b, bad = provider(server.base_url), provider(server.base_url, KEY_B), provider(server.base_url, "nope")
    try:
        mid = a.create_model("private", "vision", "classification", ())
        with pytest.raises(ProviderError) as exc:
            bad.list_models()
        assert "(HTTP 401)" in str(exc.value) and "nope" not in str(exc.value)
        assert b.list_models() == []
        with pytest.raises(NotFound):
            b.view_model(mid)
        with pytest.raises(NotFound):
            b.configure(mid, {"steps": 5})
    finally:
        for p in (a, b, bad):
            p.close()

    team = provider(server.base_url, KEY_TEAM, team_id="team_abc123", project_id="proj_xyz789")
    wrong = provider(server.base_url, KEY_TEAM, team_id="team_other")
    try:
        mid = team.create_model("scoped", "vision", "classification", ())
        team.configure(mid, {"steps": 10})
        with pytest.raises(ProviderError, match="team_other") as exc:
            wrong.configure(mid, {"steps": 10})
        assert exc.value.status == 403
    finally:
        team.close()
        wrong.close()


def test_config_names():
    assert to_params({"steps": 5, "learning_rate": 0.1, "l2": 0.0}) == {"maxTrainSteps": 5, "learningRate": 0.1,
                                                                         "l2": 0.0}
    assert from_params({"maxTrainSteps": 5, "learningRate": 0.1, "batchSize": 4}) == {
        "steps": 5, "learning_rate": 0.1, "batch_size": 4}


def test_plan_apply_converges_through_the_cli(server, static_files, tmp_path, monkeypatch):
    """The reconciler over this provider: apply, then an empty plan (uids come back through the
    state, the config round-trips whichever names the spec uses), then a removal."""
    monkeypatch.setenv("SCENARIO_TEST_KEY", KEY_A)
    base = static_files(DATA)
    circles = [f"{base}/circle/circle-{i:02d}.png" for i in range(6)]
    squares = [f"{base}/square/square-{i:02d}.png" for i in range(6)]
    project = tmp_path / "proj"
    project.mkdir()
    spec = (
        "version: 1\n"
        "providers:\n"
        "  sc: {type: scenario, api_key: '${env:SCENARIO_TEST_KEY}', base_url: '" + server.base_url + "'}\n"
        "models:\n"
        "  shapes:\n"
        "    classes:\n"
        f"      circle: {{samples: {circles}}}\n"
        f"      square: {{samples: {squares}}}\n"
        "    training: {config: {maxTrainSteps: 70, learningRate: 0.05}}\n"
    )
    (project / "modelsync.yaml").write_text(spec)
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    assert "12 samples uploaded" in r.out
    r = run_cli(project, "plan", "--detailed-exitcode")
    assert r.code == 0, r.out + r.err
    (version,) = run_cli(project, "versions", "shapes", "--json").json()
    assert version["metrics"]["steps"] == 70

    (project / "modelsync.yaml").write_text(spec.replace(f"'{circles[-1]}'", "").replace(", ]", "]"))
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    assert "1 sample deleted" in r.out
    assert run_cli(project, "plan", "--detailed-exitcode").code == 0
