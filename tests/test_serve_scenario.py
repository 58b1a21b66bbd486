"""`modelsync serve` speaking Scenario's train tool: the documented example replayed against a
real server on loopback, the vendor's limits (10 images a call, duplicates, start while
training), the status lifecycle, config mapping, keys and permissions."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from reconciler.local.serve.auth import PERM_EDIT, PERM_VIEW, KeyInfo

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "quickstart" / "data"
KEY_A, KEY_B, KEY_EDIT, KEY_TEAM = "sc-key-a-1", "sc-key-b-2", "sc-key-edit-3", "sc-key-team-4"
KEYS = {
    KEY_A: KeyInfo(owner="alice"),
    KEY_B: KeyInfo(owner="bob"),
    KEY_EDIT: KeyInfo(owner="alice", permissions=frozenset({PERM_VIEW, PERM_EDIT})),
    KEY_TEAM: KeyInfo(owner="carol", team_id="team_abc123", project_ids=frozenset({"proj_xyz789"})),
}
TOOL = "/scenario/train"


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def env(serve_thread, static_files):
    server = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None, allow_private_urls=True)
    files = static_files(DATA)
    client = httpx.Client(base_url=server.base_url, timeout=60)
    yield server, files, client
    client.close()


def urls(files: str, kind: str, n: int, start: int = 0) -> list[str]:
    return [f"{files}/{kind}/{kind}-{i:02d}.png" for i in range(start, start + n)]


def create(client: httpx.Client, name: str = "style", key: str = KEY_A, **extra) -> str:
    r = client.post("/scenario/models", json={"name": name, **extra}, headers=h(key))
    assert r.status_code == 201, r.text
    model = r.json()["model"]
    assert model["status"] == "new" and model["id"].startswith("model_")
    return model["id"]


def tool(client: httpx.Client, key: str = KEY_A, **args) -> httpx.Response:
    return client.post(TOOL, json=args, headers=h(key))


def model(client: httpx.Client, model_id: str, key: str = KEY_A, **params) -> dict:
    r = client.get(f"/scenario/models/{model_id}", params=params, headers=h(key))
    assert r.status_code == 200, r.text
    return r.json()["model"]


def test_documented_example_replayed(env):
    _, files, client = env
    mid = create(client, key=KEY_TEAM, team_id="team_abc123", project_id="proj_xyz789")
    example = {
        "action": "upload_images",
        "model_id": mid,  # the example's "model_custom_abc", as created here
        "images": urls(files, "circle", 3),  # the example's cdn.example.com images, served on loopback
        "team_id": "team_abc123",
        "project_id": "proj_xyz789",
    }
    r = client.post(TOOL, json=example, headers=h(KEY_TEAM))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["count"]) == ("uploaded", 3)  # the documented response, field by field
    assert len(body["training_image_ids"]) == 3  # modelsync extension
    m = model(client, mid, KEY_TEAM, team_id="team_abc123", project_id="proj_xyz789")
    assert [img["url"] for img in m["trainingImages"]] == example["images"]
    assert m["trainingImagesNumber"] == 3

    # the same call scoped to another team or project is refused
    r = client.post(TOOL, json={**example, "team_id": "team_other"}, headers=h(KEY_TEAM))
    assert r.status_code == 403 and "team_other" in r.json()["error"]
    r = client.post(TOOL, json={**example, "project_id": "proj_other"}, headers=h(KEY_TEAM))
    assert r.status_code == 403 and "proj_other" in r.json()["error"]


def test_limits_ten_images_and_duplicates(env):
    _, files, client = env
    mid = create(client)
    r = tool(client, action="upload_images", model_id=mid, images=urls(files, "circle", 11))
    assert r.status_code == 400 and r.json() == {"error": "images: at most 10 images a call, got 11"}
    r = tool(client, action="upload_images", model_id=mid, images=urls(files, "circle", 10))
    assert r.status_code == 200 and r.json()["count"] == 10

    r = tool(client, action="upload_images", model_id=mid, images=urls(files, "circle", 1, start=4))
    assert r.status_code == 400 and "already a training image of this model" in r.json()["error"]
    same = urls(files, "square", 1) * 2
    r = tool(client, action="upload_images", model_id=mid, images=same)
    assert r.status_code == 400 and "already a training image of this model" in r.json()["error"]
    assert model(client, mid)["trainingImagesNumber"] == 10  # nothing of the refused calls landed

    r = tool(client, action="upload_images", model_id=mid, images=[])
    assert r.status_code == 400 and r.json()["error"].startswith("images:")


def test_update_pairs_delete(env):
    _, files, client = env
    mid = create(client)
    ids = tool(client, action="upload_images", model_id=mid, images=urls(files, "circle", 3)).json()[
        "training_image_ids"]
    r = tool(client, action="update_image", model_id=mid, training_image_id=ids[0],
             image_data={"description": "a dark circle"})
    assert r.status_code == 200 and r.json() == {"status": "updated", "training_image_id": ids[0],
                                                 "description": "a dark circle"}
    r = tool(client, action="set_pairs", model_id=mid, image_data={ids[1]: "pair one", ids[2]: "pair two"})
    assert r.status_code == 200 and r.json() == {"status": "paired", "count": 2}
    captions = {img["id"]: img["description"] for img in model(client, mid)["trainingImages"]}
    assert captions == {ids[0]: "a dark circle", ids[1]: "pair one", ids[2]: "pair two"}

    r = tool(client, action="delete_image", model_id=mid, training_image_id=ids[1])
    assert r.status_code == 200 and r.json() == {"status": "deleted", "training_image_id": ids[1]}
    assert [img["id"] for img in model(client, mid)["trainingImages"]] == [ids[0], ids[2]]
    r = tool(client, action="delete_image", model_id=mid, training_image_id=ids[1])
    assert r.status_code == 404 and ids[1] in r.json()["error"]
    r = tool(client, action="update_image", model_id=mid, training_image_id=ids[0])
    assert r.status_code == 400 and r.json()["error"].startswith("image_data:")


def test_configure_maps_parameters(env):
    server, _, client = env
    mid = create(client)
    r = tool(client, action="configure", model_id=mid, config={"learningRate": 0.05, "maxTrainSteps": 120})
    assert r.status_code == 200 and r.json()["config"] == {"learningRate": 0.05, "maxTrainSteps": 120}
    assert model(client, mid)["parameters"] == {"learningRate": 0.05, "maxTrainSteps": 120}
    owner_model = server.service.get_model("alice", int(mid.removeprefix("model_"))).model
    assert owner_model.config == {"learning_rate": 0.05, "steps": 120}  # what the trainer will use

    r = tool(client, action="configure", model_id=mid, config={"steps": 50, "learning_rate": 0.2})  # spec names
    assert r.status_code == 200 and model(client, mid)["parameters"] == {"maxTrainSteps": 50, "learningRate": 0.2}

    bad = [
        ({"nbEpochs": 0}, "config.nbEpochs: expected a whole number from 1 to 100000, got 0"),
        ({"nbRepeats": "2"}, "config.nbRepeats: expected a whole number from 1 to 100000, got '2'"),
        ({"nbEpochs": 1000, "nbRepeats": 1000}, "config: nbEpochs x nbRepeats is 1000000, over the trainer's limit"),
        ({"batchSize": 0}, "config.batchSize: expected a positive integer or null, got 0"),
        ({"warmup": 3}, "config.warmup: unknown training parameter"),
        ({"maxTrainSteps": 0}, "config.maxTrainSteps: expected a positive integer, got 0"),
        ({"learningRate": "fast"}, "config.learningRate: expected a positive number, got 'fast'"),
        ({"steps": 10, "maxTrainSteps": 20}, "config.maxTrainSteps: conflicts with config.steps"),
        (None, "config: required for configure"),
    ]
    for config, message in bad:
        r = tool(client, action="configure", model_id=mid, config=config)
        assert r.status_code == 400 and r.json()["error"].startswith(message), (config, r.text)
    assert model(client, mid)["parameters"] == {"maxTrainSteps": 50, "learningRate": 0.2}
    r = tool(client, action="configure", model_id=mid, config={})
    assert r.status_code == 200 and model(client, mid)["parameters"] == {}  # {} resets to the trainer's defaults


def _wait_status(client: httpx.Client, mid: str, want: set[str], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = model(client, mid)
        if m["status"] in want or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def _two_classes(client: httpx.Client, files: str, mid: str) -> None:
    for kind in ("circle", "square"):
        r = tool(client, action="upload_images", model_id=mid, images=urls(files, kind, 8),
                 image_data={"className": kind})
        assert r.status_code == 200, r.text


def test_start_stop_and_status_lifecycle(env):
    _, files, client = env
    mid = create(client)
    r = tool(client, action="start", model_id=mid)
    assert r.status_code == 400 and "no training images" in r.json()["error"]
    _two_classes(client, files, mid)

    # a long run: start, start again (refused), stop (canceled)
    tool(client, action="configure", model_id=mid, config={"maxTrainSteps": 100_000, "learningRate": 0.01})
    r = tool(client, action="start", model_id=mid)
    assert r.status_code == 200 and r.json()["status"] == "training" and isinstance(r.json()["job_id"], int)
    assert model(client, mid)["status"] == "training"
    r = tool(client, action="start", model_id=mid)
    assert r.status_code == 400 and r.json() == {"error": "Model is already training"}
    r = tool(client, action="stop", model_id=mid)
    assert r.status_code == 200 and r.json()["status"] == "training-canceled"
    m = _wait_status(client, mid, {"training-canceled"})
    assert m["status"] == "training-canceled" and m["versions"] == []
    r = tool(client, action="stop", model_id=mid)
    assert r.status_code == 400 and "not training" in r.json()["error"]

    # a short run to the end
    tool(client, action="configure", model_id=mid, config={"maxTrainSteps": 60})
    job_id = tool(client, action="start", model_id=mid).json()["job_id"]
    m = _wait_status(client, mid, {"trained", "failed"})
    assert m["status"] == "trained", m
    assert m["trainingJob"]["id"] == job_id and m["trainingJob"]["state"] == "trained"
    (version,) = m["versions"]
    assert version["version"] == m["latestVersion"] and version["metrics"]["steps"] == 60
    assert version["parameters"] == {"maxTrainSteps": 60}  # configure replaces the whole config


def test_every_seed_config_field_is_accepted_and_epochs_become_steps(env):
    """learningRate, maxTrainSteps, nbEpochs, nbRepeats, batchSize (the seeds' config fields) are all
    accepted with their types; nbEpochs x ceil(images x nbRepeats / batchSize) steps, at most maxTrainSteps."""
    server, files, client = env
    mid = create(client)
    config = {"learningRate": 0.05, "nbEpochs": 3, "nbRepeats": 2, "batchSize": 4}
    r = tool(client, action="configure", model_id=mid, config=config)
    assert r.status_code == 200 and r.json()["config"] == config
    assert model(client, mid)["parameters"] == config  # stored as given
    _two_classes(client, files, mid)  # 16 images
    tool(client, action="start", model_id=mid)
    m = _wait_status(client, mid, {"trained", "failed"})
    assert m["status"] == "trained", m
    (version,) = m["versions"]
    # 3 epochs x ceil(16 images x 2 repeats / batches of 4) = 24 steps: what the run used
    assert version["metrics"]["steps"] == 24 and version["metrics"]["config"]["batch_size"] == 4
    assert version["parameters"] == {"learningRate": 0.05, "batchSize": 4, "maxTrainSteps": 24}
    assert model(client, mid)["parameters"] == config

    capped = {**config, "maxTrainSteps": 10}  # maxTrainSteps: the most a run takes
    assert tool(client, action="configure", model_id=mid, config=capped).status_code == 200
    tool(client, action="start", model_id=mid)
    m = _wait_status(client, mid, {"trained", "failed"})
    assert m["status"] == "trained" and m["versions"][0]["metrics"]["steps"] == 10
    stored = server.service.get_model("alice", int(mid.removeprefix("model_"))).model.config
    assert stored == {"learning_rate": 0.05, "batch_size": 4, "steps": 10, "nbEpochs": 3, "nbRepeats": 2}


def test_documented_flow_trains_an_image_set_without_classes(env):
    """upload_images -> configure -> start, exactly as documented (no classes): the images are one
    set, and start trains a one-class model of it to status trained, with only measured metrics."""
    server, files, client = env
    mid = create(client)
    r = tool(client, action="upload_images", model_id=mid, images=urls(files, "circle", 10))
    assert r.status_code == 200 and (r.json()["status"], r.json()["count"]) == ("uploaded", 10)
    r = tool(client, action="configure", model_id=mid, config={"steps": 1200})  # the documented example
    assert r.status_code == 200, r.text
    r = tool(client, action="configure", model_id=mid, config={"nbEpochs": 2, "nbRepeats": 3, "learningRate": 0.01})
    assert r.status_code == 200, r.text
    r = tool(client, action="start", model_id=mid)  # the documented example
    assert r.status_code == 200 and r.json()["status"] == "training", r.text
    m = _wait_status(client, mid, {"trained", "failed"})
    assert m["status"] == "trained", m
    metrics = m["versions"][0]["metrics"]
    assert metrics["one_class"] is True and metrics["classes"] == ["default"] and metrics["steps"] == 0
    assert metrics["num_train"] + metrics["num_holdout"] == 10 and metrics["num_holdout"] >= 1
    assert 0.0 <= metrics["recall"] <= 1.0 and 0.0 <= metrics["mean_confidence"] <= 1.0
    assert "accuracy" not in metrics  # nothing outside the set to measure it on
    # the model scores how much an image looks like the set: its own images fully, a black image not at all
    svc, model_id = server.service, int(mid.removeprefix("model_"))
    own = svc.predict("alice", model_id, [(DATA / "circle" / f"circle-{i:02d}.png").read_bytes() for i in range(10)])
    assert max(p["confidence"] for p in own) == 1.0 and all(p["label"] in ("default", None) for p in own)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "PNG")
    (black,) = svc.predict("alice", model_id, [buf.getvalue()])
    assert black["label"] is None and black["confidence"] < 0.5

    # one image is not a set; images given a single class (the className extension) are a classifier's data
    one = create(client, "one")
    tool(client, action="upload_images", model_id=one, images=urls(files, "circle", 1))
    r = tool(client, action="start", model_id=one)
    assert r.status_code == 400 and "at least 2" in r.json()["error"]
    classed = create(client, "classed")
    tool(client, action="upload_images", model_id=classed, images=urls(files, "circle", 3),
         image_data={"className": "circle"})
    r = tool(client, action="start", model_id=classed)
    assert r.status_code == 400 and "two classes" in r.json()["error"]
    assert model(client, classed)["status"] == "new"


def test_keys_and_permissions(env):
    _, files, client = env
    mid = create(client)
    args = {"action": "upload_images", "model_id": mid, "images": urls(files, "circle", 1)}
    r = client.post(TOOL, json=args)
    assert r.status_code == 401 and "Bearer" in r.json()["error"]
    r = client.post(TOOL, json=args, headers={"Authorization": f"Basic {KEY_A}"})
    assert r.status_code == 401
    r = client.post(TOOL, json=args, headers=h("not-a-key"))
    assert r.status_code == 401

    r = tool(client, KEY_B, **args)  # bob cannot see alice's model
    assert r.status_code == 404 and r.json() == {"error": f"model_id '{mid}': no such model"}
    assert client.get("/scenario/models", headers=h(KEY_B)).json() == {"models": []}
    assert client.get(f"/scenario/models/{mid}", headers=h(KEY_B)).status_code == 404

    assert tool(client, KEY_EDIT, **args).status_code == 200  # editing needs no train permission
    r = tool(client, KEY_EDIT, action="start", model_id=mid)
    assert r.status_code == 403 and "Model Train" in r.json()["error"]

    r = tool(client, action="upload_images", model_id="model_custom_abc", images=urls(files, "circle", 1))
    assert r.status_code == 404 and "model_custom_abc" in r.json()["error"]
    r = tool(client, action="explode", model_id=mid)
    assert r.status_code == 400 and "action" in r.json()["error"]


def test_markdown_answers(env):
    _, files, client = env
    mid = create(client)
    r = tool(client, action="upload_images", model_id=mid, images=urls(files, "circle", 2), response_format="markdown")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
    assert "- **status**: uploaded" in r.text and "- **count**: 2" in r.text


def test_delete_model(env):
    _, _, client = env
    mid = create(client)
    assert client.delete(f"/scenario/models/{mid}", headers=h(KEY_A)).json() == {"status": "deleted",
                                                                                 "model_id": mid}
    assert client.get(f"/scenario/models/{mid}", headers=h(KEY_A)).status_code == 404
    assert client.delete(f"/scenario/models/{mid}", headers=h(KEY_A)).status_code == 404


def test_too_many_calls_get_429_with_the_wait(serve_thread):
    server = serve_thread(keys=KEYS, rate_limit=2, total_rate_limit=None)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        assert [client.get("/scenario/models", headers=h(KEY_A)).status_code for _ in range(2)] == [200, 200]
        r = client.get("/scenario/models", headers=h(KEY_A))
        assert r.status_code == 429 and set(r.json()) == {"error"} and int(r.headers["Retry-After"]) >= 1
