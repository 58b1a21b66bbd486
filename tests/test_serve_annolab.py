"""`modelsync serve` speaking AnnoLab: the documented inference requests replayed against a real
server on loopback (201 body exactly as documented, polling to Finished), the predictions read
back from the output layer, and keys, tenancy and the "Model Run" permission."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import pytest

from reconciler.local.serve.auth import PERM_UPLOAD, PERM_VIEW, KeyInfo

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "quickstart" / "data"
UNSEEN = REPO / "examples" / "quickstart" / "unseen"
KEY_A, KEY_B, KEY_NORUN, KEY_OTHER_PROJECT = "al-key-a-1", "al-key-b-2", "al-key-norun-3", "al-key-proj-4"
KEYS = {
    KEY_A: KeyInfo(owner="alice"),
    KEY_B: KeyInfo(owner="bob"),
    KEY_NORUN: KeyInfo(owner="alice", permissions=frozenset({PERM_VIEW, PERM_UPLOAD})),
    KEY_OTHER_PROJECT: KeyInfo(owner="alice", project_ids=frozenset({"Another Project"})),
}
DOCUMENTED_201 = {"inferenceJobId", "status", "projectName", "projectId", "outputLayerName", "outputLayerId",
                  "sourceIds"}
DOCUMENTED_STATUS = {"inferenceJobId", "status", "projectId", "sourceIds"}


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Api-Key {key}"}


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def trained_model(service, owner: str = "alice", title: str = "Staple + Classify Documents") -> int:
    """A small classifier trained through the service itself."""
    m = service.create_model(owner, title)
    for kind in ("circle", "square"):
        for f in sorted((DATA / kind).glob("*.png")):
            service.add_sample(owner, m.id, kind, f.read_bytes())
    job = service.wait_training(owner, service.start_training(owner, m.id).id, timeout=60)
    assert job.state == "trained", job
    return m.id


@pytest.fixture
def env(serve_thread):
    server = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None)
    client = httpx.Client(base_url=server.base_url, timeout=60)
    yield server, client
    client.close()


def project(client: httpx.Client, name: str = "My Project", group: str = "Company Name", key: str = KEY_A) -> int:
    r = client.post("/v1/project/create", json={"groupName": group, "projectName": name}, headers=h(key))
    assert r.status_code in (200, 201), r.text
    assert r.json()["name"] == name and r.json()["groupName"] == group
    return r.json()["id"]


def source(client: httpx.Client, path: Path, project_ident, key: str = KEY_A, group: str = "Company Name") -> int:
    body = {"projectIdentifier": project_ident, "groupName": group, "sourceName": path.name, "image": data_uri(path)}
    r = client.post("/v1/source/create-image", json=body, headers=h(key))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def poll(client: httpx.Client, job_id: int, key: str = KEY_A, body: dict | None = None) -> dict:
    """The documented polling loop (it even sends the request body with the GET)."""
    deadline = time.monotonic() + 60
    while True:
        r = client.request("GET", f"/v1/infer/batch/{job_id}", json=body, headers=h(key))
        assert r.status_code == 200, r.text
        status = r.json()
        if status["status"] in ("Finished", "Errored") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_documented_inference_flow(env):
    server, client = env
    trained_model(server.service)
    pid = project(client)
    files = [UNSEEN / "circle-00.png", UNSEEN / "square-00.png"]
    sids = [source(client, f, "My Project") for f in files]

    inference_body = {
        "groupName": "Company Name",
        "projectIdentifier": "My Project",
        "sourceIds": sids,
        "modelIdentifier": "Staple + Classify Documents",
        "outputLayerIdentifier": "Gold Set",
    }
    r = client.post("/v1/infer/batch", json=inference_body, headers=h(KEY_A))
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == DOCUMENTED_201  # exactly the documented body
    assert created["status"] == "Queued" and created["projectName"] == "My Project" and created["projectId"] == pid
    assert created["outputLayerName"] == "Gold Set" and isinstance(created["outputLayerId"], int)
    assert created["sourceIds"] == sids and isinstance(created["inferenceJobId"], int)

    status = poll(client, created["inferenceJobId"], body=inference_body)
    assert set(status) >= DOCUMENTED_STATUS
    assert status["status"] == "Finished" and status["inferenceJobId"] == created["inferenceJobId"]
    assert status["projectId"] == pid and status["sourceIds"] == sids
    assert status["progress"] == {"done": 2, "total": 2} and status["outputLayerId"] == created["outputLayerId"]

    # the predictions were written into the output layer, and are read from there
    r = client.get(f"/v1/layer/{created['outputLayerId']}/annotations", headers=h(KEY_A))
    assert r.status_code == 200, r.text
    layer = r.json()
    assert layer["layerName"] == "Gold Set" and layer["projectId"] == pid
    by_source = {a["sourceId"]: a for a in layer["annotations"]}
    assert set(by_source) == set(sids)
    assert by_source[sids[0]]["value"] == "circle" and by_source[sids[1]]["value"] == "square"
    assert by_source[sids[0]]["sourceName"] == "circle-00.png" and 0.5 < by_source[sids[0]]["confidence"] <= 1.0

    # ids work in place of names: project and layer by id, model by id; the layer accumulates
    model_id = server.service.list_models("alice")[0].id
    body2 = {**inference_body, "projectIdentifier": pid, "modelIdentifier": model_id,
             "outputLayerIdentifier": created["outputLayerId"], "sourceIds": sids[:1]}
    r = client.post("/v1/infer/batch", json=body2, headers=h(KEY_A))
    assert r.status_code == 201 and r.json()["outputLayerName"] == "Gold Set"
    second = r.json()["inferenceJobId"]
    assert poll(client, second)["status"] == "Finished"
    r = client.get(f"/v1/layer/{created['outputLayerId']}/annotations", headers=h(KEY_A))
    assert len(r.json()["annotations"]) == 3
    r = client.get(f"/v1/layer/{created['outputLayerId']}/annotations", params={"inferenceJobId": second},
                   headers=h(KEY_A))
    assert [a["sourceId"] for a in r.json()["annotations"]] == sids[:1]


def test_refusals_in_annolab_shape(env):
    server, client = env
    trained_model(server.service)
    untrained = server.service.create_model("alice", "untrained").id
    project(client)
    project(client, "Another Project")
    sid = source(client, UNSEEN / "circle-01.png", "My Project")
    other_sid = source(client, UNSEEN / "circle-02.png", "Another Project")
    body = {"groupName": "Company Name", "projectIdentifier": "My Project", "sourceIds": [sid],
            "modelIdentifier": "Staple + Classify Documents", "outputLayerIdentifier": "Gold Set"}

    def refused(status: int, key: str = KEY_A, **changes) -> str:
        r = client.post("/v1/infer/batch", json={**body, **changes}, headers=h(key))
        assert r.status_code == status, r.text
        assert set(r.json()) == {"message"}
        return r.json()["message"]

    assert "Api-Key" in refused(401, key="wrong-key")
    r = client.post("/v1/infer/batch", json=body, headers={"Authorization": KEY_A})  # no "Api-Key " scheme
    assert r.status_code == 401 and set(r.json()) == {"message"}
    # The doc's only refusal of a job request is "400 The inference could not be started".
    assert "Model Run" in refused(400, key=KEY_NORUN)
    assert "Model Run" in refused(400, key=KEY_OTHER_PROJECT)
    assert "My Project" in refused(400, key=KEY_B)  # bob has no such project
    assert "modelIdentifier" in refused(400, modelIdentifier="No Such Model")
    assert "not trained" in refused(400, modelIdentifier=untrained)
    assert "not in project" in refused(400, sourceIds=[other_sid])
    assert "not found" in refused(400, sourceIds=[sid + 1000])
    assert "sourceIds" in refused(400, sourceIds=[])
    assert "outputLayerIdentifier" in refused(400, outputLayerIdentifier=987654)
    assert "Other Group" in refused(400, groupName="Other Group")
    assert refused(400, sourceIds="all").startswith("sourceIds")

    job = client.post("/v1/infer/batch", json=body, headers=h(KEY_A)).json()["inferenceJobId"]
    for key in (KEY_B, KEY_NORUN):  # another key's job, or no "Model Run": 404 as documented
        r = client.get(f"/v1/infer/batch/{job}", headers=h(key))
        assert r.status_code == 404 and set(r.json()) == {"message"}
    r = client.get("/v1/infer/batch/999999", headers=h(KEY_A))
    assert r.status_code == 404 and set(r.json()) == {"message"}
    r = client.get(f"/v1/infer/batch/{job}", headers=h("wrong-key"))
    assert r.status_code == 401 and set(r.json()) == {"message"}


def test_sources_projects_and_models(env):
    server, client = env
    pid = project(client)
    assert project(client) == pid  # creating it again answers the same project
    again = {"groupName": "Elsewhere", "projectName": "My Project"}
    r = client.post("/v1/project/create", json=again, headers=h(KEY_A))
    assert r.status_code == 409 and "Company Name" in r.json()["message"]
    r = client.get(f"/v1/project/{pid}", headers=h(KEY_A))
    assert r.json() == {"id": pid, "name": "My Project", "groupName": "Company Name", "defaultDirectory": "Uploads"}
    assert client.get("/v1/project/Company%20Name/My%20Project", headers=h(KEY_A)).json()["id"] == pid
    assert client.get(f"/v1/project/{pid}", headers=h(KEY_B)).status_code == 404

    sid = source(client, UNSEEN / "square-01.png", pid)
    r = client.get(f"/v1/source/{sid}", headers=h(KEY_A))
    assert r.status_code == 200 and r.json()["name"] == "square-01.png" and r.json()["projectId"] == pid
    assert client.get(f"/v1/source/{sid}", headers=h(KEY_B)).status_code == 404
    bad = {"projectIdentifier": pid, "groupName": "Company Name", "sourceName": "x.png", "image": "ftp://x/y"}
    r = client.post("/v1/source/create-image", json=bad, headers=h(KEY_A))
    assert r.status_code == 400 and r.json()["message"].startswith("image:")

    trained_model(server.service)
    (m,) = client.get("/v1/models", headers=h(KEY_A)).json()["models"]
    assert m["name"] == "Staple + Classify Documents" and m["trained"] is True and m["latestVersion"]
    assert client.get("/v1/models", headers=h(KEY_B)).json() == {"models": []}


def test_rate_limited_in_annolab_shape(serve_thread):
    server = serve_thread(keys=KEYS, rate_limit=2, total_rate_limit=None)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        assert [client.get("/v1/models", headers=h(KEY_A)).status_code for _ in range(2)] == [200, 200]
        r = client.get("/v1/models", headers=h(KEY_A))
        assert r.status_code == 429 and set(r.json()) == {"message"} and int(r.headers["Retry-After"]) >= 1


def test_keys_limited_to_projects_create_only_their_projects(env):
    """A key with ``projects`` reaches only those; it may create a project named in its list, no other
    (its list is fixed when the server starts, so another new project would be invisible to it)."""
    _, client = env
    r = client.post("/v1/project/create", json={"groupName": "Company Name", "projectName": "Third"},
                    headers=h(KEY_OTHER_PROJECT))
    assert r.status_code == 403 and set(r.json()) == {"message"}
    assert "limited to certain projects" in r.json()["message"]
    pid = project(client, "Another Project", key=KEY_OTHER_PROJECT)
    assert client.get(f"/v1/project/{pid}", headers=h(KEY_OTHER_PROJECT)).status_code == 200
    other = project(client, "Third")  # an unlimited key of the same owner
    assert client.get(f"/v1/project/{other}", headers=h(KEY_OTHER_PROJECT)).status_code == 404
