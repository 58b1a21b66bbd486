"""`modelsync serve` speaking Autogon LabelCraft: the documented requests replayed against a real
server on loopback, field by field, plus keys, tenancy, permissions and bad input."""

from __future__ import annotations

import io
import random
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from reconciler.local.serve.auth import PERM_EDIT, PERM_VIEW, KeyInfo

KEY_A, KEY_B, KEY_VIEW = "aug-key-a-1111", "aug-key-b-2222", "aug-key-view-3333"
KEY_P1 = "aug-key-p1-4444"  # alice's, limited to project 1 (the first project a test creates)
KEYS = {
    KEY_A: KeyInfo(owner="alice"),
    KEY_B: KeyInfo(owner="bob"),
    KEY_VIEW: KeyInfo(owner="alice", permissions=frozenset({PERM_VIEW, PERM_EDIT})),
    KEY_P1: KeyInfo(owner="alice", project_ids=frozenset({"1"})),
}
LABEL = "/api/v1/label"


def scene(rng: random.Random, size: int = 96) -> tuple[bytes, dict]:
    """A noisy background with one blue square; returns the PNG and the square's box."""
    img = Image.new("RGB", (size, size), (220, 220, 210))
    for _ in range(200):
        img.putpixel((rng.randrange(size), rng.randrange(size)), (180, 180, 170))
    side = rng.randint(24, 34)
    x0, y0 = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
    ImageDraw.Draw(img).rectangle((x0, y0, x0 + side, y0 + side), fill=(30, 60, 160))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), {"x": x0, "y": y0, "w": side, "h": side}


@pytest.fixture
def scenes(tmp_path: Path) -> tuple[Path, list[dict]]:
    """12 scenes written as files: (directory, [{name, box}]); also big.png (800x400) and tiny.png (64x64)."""
    rng = random.Random(7)
    root = tmp_path / "scenes"
    root.mkdir()
    out = []
    for i in range(12):
        data, box = scene(rng)
        (root / f"s{i:02d}.png").write_bytes(data)
        out.append({"name": f"s{i:02d}.png", "box": box})
    for name, size in (("big.png", (800, 400)), ("tiny.png", (64, 64))):
        buf = io.BytesIO()
        Image.new("RGB", size, (200, 190, 180)).save(buf, "PNG")
        (root / name).write_bytes(buf.getvalue())
    return root, out


@pytest.fixture
def env(serve_thread, static_files, scenes):
    server = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None, allow_private_urls=True)
    files = static_files(scenes[0])
    client = httpx.Client(base_url=server.base_url, timeout=60)
    yield server, files, scenes[1], client
    client.close()


def iou(a: dict, b: dict) -> float:
    ix = max(0.0, min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"]))
    iy = max(0.0, min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"]))
    inter = ix * iy
    return inter / (a["w"] * a["h"] + b["w"] * b["h"] - inter)


def h(key: str) -> dict[str, str]:
    return {"X-AUG-KEY": key}


def new_project(client: httpx.Client, name: str = "boxes", key: str = KEY_A, purpose: str = "detection") -> int:
    r = client.post(f"{LABEL}/project/", json={"name": name, "purpose": purpose}, headers=h(key))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] is True and body["data"]["name"] == name
    return body["data"]["id"]


def test_documented_image_requests(env):
    _, files, items, client = env
    pid = new_project(client)
    urls = [f"{files}/{it['name']}" for it in items[:3]]

    # POST /api/v1/label/image/ {images: [urls], project_id} -- exactly the documented body
    r = client.post(f"{LABEL}/image/", json={"images": urls, "project_id": pid}, headers=h(KEY_A))
    assert r.status_code == 201, r.text
    added = r.json()["data"]
    assert [a["image_url"] for a in added] == urls
    assert all(isinstance(a["image_id"], int) and a["annotations"] == [] for a in added)

    # GET /api/v1/label/image?project_id= -- documented without the trailing slash
    r = client.get(f"{LABEL}/image", params={"project_id": pid}, headers=h(KEY_A))
    assert r.status_code == 200, r.text
    listed = r.json()["data"]
    assert [(x["image_id"], x["image_url"]) for x in listed] == [(a["image_id"], a["image_url"]) for a in added]

    # the documented annotation body, exactly (no project_id), on an image big enough for its box;
    # read back field by field
    r = client.post(f"{LABEL}/image/", json={"images": [f"{files}/big.png"], "project_id": pid}, headers=h(KEY_A))
    assert r.status_code == 201, r.text
    image_id = r.json()["data"][0]["image_id"]
    doc = {"image_id": image_id, "annotations": [{"lbl": "object_class", "bbx": {"x": 452, "y": 134, "w": 241,
                                                                                     "h": 143}}]}
    r = client.post(f"{LABEL}/annotation/", json=doc, headers=h(KEY_A))
    assert r.status_code == 200, r.text
    r = client.get(f"{LABEL}/image/", params={"project_id": pid}, headers=h(KEY_A))
    entry = next(x for x in r.json()["data"] if x["image_id"] == image_id)
    assert {"image_id": entry["image_id"], "annotations": entry["annotations"]} == doc
    # with project_id too (checked: the image must be in that project)
    r = client.post(f"{LABEL}/annotation/", json={"project_id": pid, **doc}, headers=h(KEY_A))
    assert r.status_code == 200, r.text
    other = new_project(client, "other")
    r = client.post(f"{LABEL}/annotation/", json={"project_id": other, **doc}, headers=h(KEY_A))
    assert r.status_code == 404 and r.json()["status"] is False and f"not in project {other}" in r.json()["message"]
    r = client.post(f"{LABEL}/annotation/", json=doc, headers=h(KEY_B))  # bob: no such image
    assert r.status_code == 404 and r.json()["status"] is False
    r = client.request("DELETE", f"{LABEL}/image/", json={"images": [image_id], "project_id": pid}, headers=h(KEY_A))
    assert r.status_code == 200, r.text

    # DELETE /api/v1/label/image/ {images: [ids], project_id}
    gone = [added[1]["image_id"], added[2]["image_id"]]
    r = client.request("DELETE", f"{LABEL}/image/", json={"images": gone, "project_id": pid}, headers=h(KEY_A))
    assert r.status_code == 200, r.text
    r = client.get(f"{LABEL}/image", params={"project_id": pid}, headers=h(KEY_A))
    assert [x["image_id"] for x in r.json()["data"]] == [added[0]["image_id"]]
    # deleting again: the ids are not in the project any more
    r = client.request("DELETE", f"{LABEL}/image/", json={"images": gone, "project_id": pid}, headers=h(KEY_A))
    assert r.status_code == 404 and r.json()["status"] is False and str(gone[0]) in r.json()["message"]


def test_class_and_boxes_attached_per_image(env):
    _, files, items, client = env
    pid = new_project(client)
    it = items[0]
    body = {
        "project_id": pid,
        "images": [
            {"url": f"{files}/{it['name']}", "annotations": [{"lbl": "square", "bbx": it["box"]}]},
            {"url": f"{files}/{items[1]['name']}", "lbl": "empty"},
            f"{files}/{items[2]['name']}",
        ],
    }
    r = client.post(f"{LABEL}/image/", json=body, headers=h(KEY_A))
    assert r.status_code == 201, r.text
    first, second, third = r.json()["data"]
    assert first["lbl"] == "square" and first["annotations"] == [{"lbl": "square", "bbx": it["box"]}]
    assert second["lbl"] == "empty" and third["lbl"] == "unlabeled"
    r = client.get(f"{LABEL}/project/{pid}/", headers=h(KEY_A))
    assert r.json()["data"]["num_images"] == 3 and sorted(r.json()["data"]["classes"]) == [
        "empty", "square", "unlabeled"]


def test_train_retrain_and_predict_documented(env):
    _, files, items, client = env
    pid = new_project(client)
    images = [{"url": f"{files}/{it['name']}", "annotations": [{"lbl": "square", "bbx": it["box"]}]}
              for it in items[:10]]
    r = client.post(f"{LABEL}/image/", json={"project_id": pid, "images": images}, headers=h(KEY_A))
    assert r.status_code == 201, r.text

    body = {"model_type": "small", "project_id": pid, "model_load_name": None, "model_save_name": "squares-v1"}
    r = client.post(f"{LABEL}/model/train/", json=body, headers=h(KEY_A))
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert data["model_name"] == "squares-v1" and data["status"] == "trained" and data["model_type"] == "small"
    assert 0.0 <= data["metrics"]["accuracy"] <= 1.0 and data["metrics"]["num_train"] > 0

    # the same name again is refused; a retrain from the saved model works
    r = client.post(f"{LABEL}/model/train/", json=body, headers=h(KEY_A))
    assert r.status_code == 409 and "squares-v1" in r.json()["message"]
    body2 = {"model_type": "small", "project_id": pid, "model_load_name": "squares-v1", "model_save_name": "v2"}
    r = client.post(f"{LABEL}/model/train/", json=body2, headers=h(KEY_A))
    assert r.status_code == 201, r.text
    assert r.json()["data"]["model_load_name"] == "squares-v1" and r.json()["data"]["metrics"]["fine_tuned"] is True

    target = items[11]
    url = f"{files}/{target['name']}"
    body = {"app_id": pid, "image_urls": [url], "confidence_thresh": 0.5, "overlap_thresh": 0.3,
            "model_name": "squares-v1"}
    r = client.post(f"{LABEL}/model/predict/", json=body, headers=h(KEY_A))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] is True and list(answer["annotations"]) == [url]
    found = answer["annotations"][url]
    assert found and all(set(f) == {"lbl", "conf", "bbx"} and f["lbl"] == "square" for f in found)
    assert all(0.5 <= f["conf"] <= 1.0 for f in found)
    best = max(found, key=lambda f: f["conf"])
    assert iou(best["bbx"], target["box"]) > 0.5

    # a high threshold drops the box; an unknown model name is a 404 in Autogon's shape
    r = client.post(f"{LABEL}/model/predict/", json={**body, "confidence_thresh": 1.0}, headers=h(KEY_A))
    assert r.json()["annotations"][url] == []
    r = client.post(f"{LABEL}/model/predict/", json={**body, "model_name": "nope"}, headers=h(KEY_A))
    assert r.status_code == 404 and r.json()["status"] is False and "nope" in r.json()["message"]

    r = client.get(f"{LABEL}/project/{pid}/", headers=h(KEY_A))
    names = [m["model_name"] for m in r.json()["data"]["models"]]
    assert names == ["v2", "squares-v1"]


def test_train_refusals(env):
    _, files, items, client = env
    pid = new_project(client)
    r = client.post(f"{LABEL}/model/train/", json={"model_type": "huge", "project_id": pid}, headers=h(KEY_A))
    assert r.status_code == 400 and r.json() == {"status": False,
                                                 "message": "model_type: expected small, medium or large, got 'huge'"}
    r = client.post(f"{LABEL}/model/train/", json={"model_type": "small", "project_id": pid}, headers=h(KEY_A))
    assert r.status_code == 400 and "boxes" in r.json()["message"]  # a detection project with no boxes
    client.post(f"{LABEL}/image/", json={"project_id": pid, "images": [
        {"url": f"{files}/{items[0]['name']}", "annotations": [{"lbl": "square", "bbx": items[0]["box"]}]}]},
        headers=h(KEY_A))
    body = {"model_type": "small", "project_id": pid, "model_load_name": "missing"}
    r = client.post(f"{LABEL}/model/train/", json=body, headers=h(KEY_A))
    assert r.status_code == 400 and r.json()["message"].startswith("model_load_name:")


def test_keys_tenancy_and_permissions(env):
    _, files, items, client = env
    pid = new_project(client)
    url = f"{files}/{items[0]['name']}"
    body = {"images": [url], "project_id": pid}

    r = client.post(f"{LABEL}/image/", json=body, headers=h("wrong-key"))
    assert r.status_code == 401 and r.json()["status"] is False and "X-AUG-KEY" in r.json()["message"]
    r = client.post(f"{LABEL}/image/", json=body)
    assert r.status_code == 401

    # another owner's project does not exist for bob; his list is empty
    r = client.post(f"{LABEL}/image/", json=body, headers=h(KEY_B))
    assert r.status_code == 404 and r.json()["status"] is False
    assert client.get(f"{LABEL}/project/", headers=h(KEY_B)).json()["data"] == []
    r = client.get(f"{LABEL}/image", params={"project_id": pid}, headers=h(KEY_B))
    assert r.status_code == 404

    # a key without "Model Train" / "Model Run" is refused
    r = client.post(f"{LABEL}/model/train/", json={"model_type": "small", "project_id": pid}, headers=h(KEY_VIEW))
    assert r.status_code == 403 and "Model Train" in r.json()["message"]
    r = client.post(f"{LABEL}/model/predict/", json={"app_id": pid, "image_urls": [url], "model_name": "x"},
                    headers=h(KEY_VIEW))
    assert r.status_code == 403 and "Model Run" in r.json()["message"]


def test_bad_input_names_the_field(env):
    _, files, items, client = env
    pid = new_project(client)
    url = f"{files}/{items[0]['name']}"
    bad_box = {"project_id": pid, "images": [{"url": url, "annotations": [{"lbl": "a", "bbx": {"x": 1, "y": 1,
                                                                                              "w": 0, "h": 5}}]}]}
    r = client.post(f"{LABEL}/image/", json=bad_box, headers=h(KEY_A))
    assert r.status_code == 400 and r.json()["message"] == "images[0].annotations[0].bbx.w: must be > 0, got 0.0"
    r = client.post(f"{LABEL}/image/", json={"project_id": "abc", "images": [url]}, headers=h(KEY_A))
    assert r.status_code == 400 and "project_id" in r.json()["message"]
    r = client.post(f"{LABEL}/image/", json={"project_id": pid, "images": ["ftp://x/y.png"]}, headers=h(KEY_A))
    assert r.status_code == 400 and r.json()["message"].startswith("images[0]:")
    r = client.post(f"{LABEL}/model/predict/", json={"app_id": pid, "image_urls": [url], "model_name": "m",
                                                     "confidence_thresh": 2}, headers=h(KEY_A))
    assert r.status_code == 400 and r.json()["message"].startswith("confidence_thresh:")


def test_private_urls_refused_by_default(serve_thread, static_files, scenes):
    server = serve_thread(keys=KEYS, rate_limit=None, total_rate_limit=None)  # allow_private_urls=False
    files = static_files(scenes[0])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        pid = new_project(client)
        r = client.post(f"{LABEL}/image/", json={"project_id": pid, "images": [f"{files}/s00.png"]}, headers=h(KEY_A))
        assert r.status_code == 400 and "private address" in r.json()["message"]


def test_rate_limit_answers_429_in_autogon_shape(serve_thread):
    server = serve_thread(keys=KEYS, rate_limit=3, total_rate_limit=None)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        codes = [client.get(f"{LABEL}/project/", headers=h(KEY_A)).status_code for _ in range(3)]
        r = client.get(f"{LABEL}/project/", headers=h(KEY_A))
        assert codes == [200, 200, 200]
        assert r.status_code == 429 and r.json()["status"] is False and int(r.headers["Retry-After"]) >= 1


def test_boxes_must_lie_on_the_image(env):
    """Autogon's docs do not clip boxes: one with less than a pixel on the image (the boxes the trainer
    would drop) is refused in Autogon's error shape and nothing is stored; one partly on it is kept as sent."""
    server, files, _, client = env
    pid = new_project(client)
    tiny = f"{files}/tiny.png"  # 64 x 64
    doc_box = {"x": 452, "y": 134, "w": 241, "h": 143}  # the README's box: far off a 64 x 64 image
    body = {"project_id": pid, "images": [{"url": tiny, "annotations": [{"lbl": "object_class", "bbx": doc_box}]}]}
    r = client.post(f"{LABEL}/image/", json=body, headers=h(KEY_A))
    assert r.status_code == 400 and r.json() == {
        "status": False,
        "message": "images[0].annotations[0].bbx: the box (x=452, y=134, w=241, h=143) lies outside the 64x64 image",
    }
    assert client.get(f"{LABEL}/image", params={"project_id": pid}, headers=h(KEY_A)).json()["data"] == []

    r = client.post(f"{LABEL}/image/", json={"project_id": pid, "images": [tiny]}, headers=h(KEY_A))
    image_id = r.json()["data"][0]["image_id"]
    for box in (doc_box, {"x": 63.5, "y": 0, "w": 10, "h": 10}, {"x": 10, "y": 64, "w": 5, "h": 5}):
        r = client.post(f"{LABEL}/annotation/", json={"image_id": image_id, "annotations": [
            {"lbl": "ok", "bbx": {"x": 1, "y": 1, "w": 5, "h": 5}}, {"lbl": "off", "bbx": box}]}, headers=h(KEY_A))
        assert r.status_code == 400, (box, r.text)
        assert r.json()["status"] is False and r.json()["message"].startswith("annotations[1].bbx: the box")
    assert server.service.get_sample("alice", image_id).boxes == ()  # nothing stored

    partly = {"x": 50, "y": 40, "w": 30, "h": 30}  # 14 x 24 pixels of it on the image: kept as sent
    r = client.post(f"{LABEL}/annotation/", json={"image_id": image_id, "annotations": [
        {"lbl": "edge", "bbx": partly}]}, headers=h(KEY_A))
    assert r.status_code == 200, r.text
    assert r.json()["data"]["annotations"] == [{"lbl": "edge", "bbx": partly}]


def test_keys_limited_to_projects(env):
    """A key limited to projects sees and uses only those, cannot create projects (its list is fixed),
    and cannot retrain from a model saved in another project."""
    server, files, items, client = env
    p1 = new_project(client)
    p2 = new_project(client, "not p1's")
    assert p1 == 1  # KEY_P1 is limited to project 1
    assert [p["id"] for p in client.get(f"{LABEL}/project/", headers=h(KEY_P1)).json()["data"]] == [p1]

    r = client.post(f"{LABEL}/project/", json={"name": "new"}, headers=h(KEY_P1))
    assert r.status_code == 403 and r.json()["status"] is False and "cannot create" in r.json()["message"]
    assert [p["name"] for p in client.get(f"{LABEL}/project/", headers=h(KEY_A)).json()["data"]] == [
        "boxes", "not p1's"]  # nothing was created

    url = f"{files}/{items[0]['name']}"
    for pid, want in ((p1, 201), (p2, 403)):
        r = client.post(f"{LABEL}/image/", json={"images": [url], "project_id": pid}, headers=h(KEY_P1))
        assert r.status_code == want, r.text
    r = client.get(f"{LABEL}/image", params={"project_id": p2}, headers=h(KEY_P1))
    assert r.status_code == 403 and r.json()["status"] is False
    # an image of project 2, annotated without project_id: the image's project decides
    r = client.post(f"{LABEL}/image/", json={"images": [url], "project_id": p2}, headers=h(KEY_A))
    other_image = r.json()["data"][0]["image_id"]
    r = client.post(f"{LABEL}/annotation/", json={"image_id": other_image, "annotations": []}, headers=h(KEY_P1))
    assert r.status_code == 403 and r.json()["status"] is False

    # a model saved in project 2 is not a base for project 1 through this key (it is through an unlimited one)
    svc = server.service
    images = [{"url": f"{files}/{it['name']}", "annotations": [{"lbl": "square", "bbx": it["box"]}]}
              for it in items[:4]]
    client.post(f"{LABEL}/image/", json={"project_id": p2, "images": images}, headers=h(KEY_A))
    job = svc.start_training("alice", p2, config={"steps": 20}, save_name="saved-in-p2")
    assert svc.wait_training("alice", job.id, timeout=120).state == "trained"
    client.post(f"{LABEL}/image/", json={"project_id": p1, "images": images}, headers=h(KEY_A))
    body = {"model_type": "small", "project_id": p1, "model_load_name": "saved-in-p2"}
    r = client.post(f"{LABEL}/model/train/", json=body, headers=h(KEY_P1))
    assert r.status_code == 403 and r.json()["status"] is False and "model_load_name" in r.json()["message"]
