"""`modelsync serve`'s astica dialect, over real HTTP against a real LocalService.

The documented request examples are replayed and the answers compared field by field
(name and JSON type) with the documented response examples.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import httpx
import pytest

from reconciler.local.serve import KeyInfo

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO / "examples" / "quickstart" / "data"
KEY_A, KEY_B = "test-key-alice-0001", "test-key-bob-0002"

# --- the documented examples (seeds/003), key replaced, ids filled in per test --------
DOC_LIST_ENTRY = {
    "id": 19241,
    "title": "My first model",
    "numClass": 3,
    "numSample": 231,
    "total_size": 5.04,
    "date_trained": 1685444210,
    "date_created": 1685422390,
}
# fields the README adds to each dataset_list entry
README_LIST_FIELDS = {"trained": int, "model_version": str, "type": str, "purpose": str, "tags": str}
DOC_VIEW_DATASET = {
    "id": 3,
    "title": "My first model",
    "numClass": 3,
    "numSample": 231,
    "total_size": 5.04,
    "date_trained": 1685421180,
    "date_created": 1690573749,
}
DOC_CLASS = {"id": 11, "title": "Can", "date_created": 1685253130, "totalSize": 8.47}
DOC_SAMPLE = {"id": 132726, "uid": "uniqueString_123", "size": 0.253747, "date_created": "1685253132"}


def png(name: str) -> bytes:
    return (SHAPES / name.split("-")[0] / f"{name}.png").read_bytes()


def same_shape(doc: dict, got: dict, where: str) -> None:
    """Every documented field is present with the documented JSON type."""
    for field, value in doc.items():
        assert field in got, f"{where}: missing field {field!r}"
        want = float if isinstance(value, float) else type(value)
        assert isinstance(got[field], want) and not isinstance(got[field], bool), (
            f"{where}.{field}: {got[field]!r} is not {want.__name__}"
        )


@pytest.fixture
def astica(serve_thread):
    handle = serve_thread(
        keys={KEY_A: KeyInfo(owner="alice"), KEY_B: KeyInfo(owner="bob")},
        rate_limit=None,
        total_rate_limit=None,
    )
    client = httpx.Client(base_url=handle.base_url, timeout=30)

    def post(path: str, body: dict, key: str | None = KEY_A) -> dict:
        payload = dict(body) if key is None else {"tkn": key, **body}
        r = client.post(path, json=payload)
        assert r.headers["content-type"].startswith("application/json")
        return r.json()

    post.client = client  # type: ignore[attr-defined]
    post.handle = handle  # type: ignore[attr-defined]
    yield post
    client.close()


def create(post, title: str, key: str = KEY_A) -> int:
    body = {"dataset_title": title, "dataset_type": "vision", "dataset_purpose": "classification"}
    body["dataset_tags"] = "x,y"
    assert post("/model/create", body, key) == {"status": "OK"}
    ids = [e["id"] for e in post("/model/list", {}, key)["dataset_list"] if e["title"] == title]
    assert len(ids) == 1
    return ids[0]


def upload(post, model_id, cls: str, name: str, uid: str | None = None, key: str = KEY_A, **extra) -> dict:
    body = {"model_id": str(model_id), "model_class": cls, "input": base64.b64encode(png(name)).decode(), **extra}
    if uid is not None:
        body["uid"] = uid
    return post("/model/upload", body, key)


def test_documented_examples_answer_documented_fields(astica):
    # create: exactly the documented answer
    mid = create(astica, "My first model")
    for i, name in enumerate(["circle-00", "circle-01", "square-00"]):
        assert upload(astica, mid, name.split("-")[0].title(), name, uid=f"uniqueString_{i}")["status"] == "OK"

    # list (the docs' /model/view without model_id, and the samples' /model/list)
    for path in ("/model/view", "/model/list"):
        listing = astica(path, {})
        assert listing["status"] == "OK"
        assert listing["astica"] == {"request": "dataset", "requestType": "list"}
        (entry,) = listing["dataset_list"]
        same_shape(DOC_LIST_ENTRY, entry, f"{path} dataset_list[0]")
        for field, typ in README_LIST_FIELDS.items():
            assert isinstance(entry[field], typ), field
        assert (entry["numClass"], entry["numSample"], entry["trained"], entry["tags"]) == (2, 3, 0, "x,y")

    # view, with the model id as the docs send it (a string)
    view = astica("/model/view", {"model_id": str(mid)})
    assert view["status"] == "OK" and view["astica"] == {"request": "dataset", "requestType": "view"}
    ds = view["dataset"]
    same_shape(DOC_VIEW_DATASET, ds, "dataset")
    classes = {c["title"]: c for c in ds["class_list"]}
    assert set(classes) == {"Circle", "Square"}
    same_shape(DOC_CLASS, classes["Circle"], "class_list[0]")
    samples = classes["Circle"]["samples"]
    assert len(samples) == 2
    for s in samples:
        same_shape(DOC_SAMPLE, s, "samples[0]")
    s0 = next(s for s in samples if s["uid"] == "uniqueString_0")
    assert s0["digest"] == "sha256:" + hashlib.sha256(png("circle-00")).hexdigest()  # modelsync extension
    assert s0["size"] == pytest.approx(len(png("circle-00")) / 2**20, abs=1e-6)
    total = sum(len(png(n)) for n in ["circle-00", "circle-01", "square-00"])
    assert ds["total_size"] == pytest.approx(total / 2**20, abs=0.01)

    # the documented upload / remove examples answer {"status": "OK"}
    assert upload(astica, mid, "Dog", "square-01", uid="optional identifier here")["status"] == "OK"
    assert astica("/model/sample_remove", {"sample_id": str(s0["id"]), "sample_uid": ""}) == {"status": "OK"}
    assert astica("/model/class_remove", {"class_id": str(classes["Square"]["id"])}) == {"status": "OK"}
    assert astica("/model/model_remove", {"model_id": str(mid)}) == {"status": "OK"}
    assert astica("/model/list", {})["dataset_list"] == []


def test_sample_remove_by_uid_names_one_sample(astica):
    """astica documents sample_uid "in place of sample_id": it names one sample. A uid found in two
    models removes nothing and asks for model_id; the documented body (sample_id, empty uid) works."""
    m1, m2 = create(astica, "one"), create(astica, "two")
    upload(astica, m1, "a", "circle-06", uid="shared")
    upload(astica, m2, "a", "circle-07", uid="shared")
    s = upload(astica, m2, "a", "circle-08", uid="only-in-two")
    out = astica("/model/sample_remove", {"sample_uid": "shared"})
    assert out["status"] == "ERROR" and "model_id" in out["error"] and f"{m1}, {m2}" in out["error"]
    assert [astica("/model/view", {"model_id": m})["dataset"]["numSample"] for m in (m1, m2)] == [1, 2]
    assert astica("/model/sample_remove", {"sample_uid": "shared", "model_id": str(m2)}) == {"status": "OK"}
    assert astica("/model/sample_remove", {"sample_uid": "shared"}) == {"status": "OK"}  # now only in m1
    assert astica("/model/sample_remove", {"tkn": KEY_A, "sample_id": str(s["sample_id"]), "sample_uid": ""}) == {
        "status": "OK"}  # the documented request
    assert [astica("/model/view", {"model_id": m})["dataset"]["numSample"] for m in (m1, m2)] == [0, 0]


def test_keys_limited_to_projects_see_only_their_models(serve_thread):
    """A key with ``projects`` (astica's unit of access is the model) lists and uses only those models,
    reaches samples and classes only through them, and cannot create models."""
    scoped = "test-key-scoped-0003"
    handle = serve_thread(keys={KEY_A: KeyInfo(owner="alice"), scoped: KeyInfo(owner="alice",
                                                                              project_ids=frozenset({"1"}))},
                          rate_limit=None, total_rate_limit=None)
    client = httpx.Client(base_url=handle.base_url, timeout=30)

    def post(path: str, body: dict, key: str = KEY_A) -> dict:
        return client.post(path, json={"tkn": key, **body}).json()

    m1, m2 = create(post, "mine"), create(post, "not mine")
    assert m1 == 1
    s1 = upload(post, m1, "a", "circle-09", uid="u")
    s2 = upload(post, m2, "a", "circle-10", uid="u")
    assert [e["id"] for e in post("/model/list", {}, scoped)["dataset_list"]] == [m1]
    assert [e["id"] for e in post("/model/view", {}, scoped)["dataset_list"]] == [m1]
    assert post("/model/view", {"model_id": str(m1)}, scoped)["status"] == "OK"
    b64 = base64.b64encode(png("circle-11")).decode()
    no_access = f"model {m2}: this API key has no access to it"
    class_id = post("/model/view", {"model_id": m2})["dataset"]["class_list"][0]["id"]
    for path, body, message in [
        ("/model/view", {"model_id": str(m2)}, no_access),
        ("/model/upload", {"model_id": m2, "model_class": "a", "input": b64}, no_access),
        ("/model/model_train", {"model_id": m2}, no_access),
        ("/model/model_remove", {"model_id": m2}, no_access),
        ("/detect", {"model_id": m2, "input": b64}, no_access),
        ("/model/sample_remove", {"sample_id": s2["sample_id"]}, no_access),
        ("/model/sample_remove", {"sample_uid": "u", "model_id": m2}, no_access),
        ("/model/class_remove", {"class_id": class_id}, f"class {class_id}: not found"),
        ("/model/create", {"dataset_title": "t", "dataset_type": "vision", "dataset_purpose": "classification"},
         "this API key is limited to certain models and cannot create a new model"),
    ]:
        assert post(path, body, scoped) == {"status": "ERROR", "error": message}, path
    assert [e["title"] for e in post("/model/list", {})["dataset_list"]] == ["mine", "not mine"]
    assert post("/model/view", {"model_id": m2})["dataset"]["numSample"] == 1  # untouched
    # the uid is in both models, but this key sees one: its own sample goes
    assert post("/model/sample_remove", {"sample_uid": "u"}, scoped) == {"status": "OK"}
    assert [post("/model/view", {"model_id": m})["dataset"]["numSample"] for m in (m1, m2)] == [0, 1]
    assert s1["status"] == "OK"
    client.close()


def test_ids_as_ints_and_strings_and_sample_remove_by_uid(astica):
    mid = create(astica, "ids")
    upload(astica, mid, "a", "circle-02", uid="u-1")
    upload(astica, mid, "a", "circle-03", uid="u-2")
    assert astica("/model/sample_remove", {"sample_uid": "u-1"}) == {"status": "OK"}
    assert astica("/model/sample_remove", {"sample_uid": "u-2", "model_id": mid}) == {"status": "OK"}
    ds = astica("/model/view", {"model_id": mid})["dataset"]
    assert ds["numSample"] == 0
    again = astica("/model/sample_remove", {"sample_uid": "u-1"})
    assert again["status"] == "ERROR" and "u-1" in again["error"]
    assert astica("/model/sample_remove", {})["status"] == "ERROR"


def test_upload_inputs_base64_data_uri_and_url(astica, static_files, serve_thread):
    mid = create(astica, "inputs")
    data = png("square-02")
    assert upload(astica, mid, "s", "square-02", uid="b64")["status"] == "OK"
    uri = "data:image/png;base64," + base64.b64encode(png("square-03")).decode()
    assert astica("/model/upload", {"model_id": mid, "model_class": "s", "input": uri, "uid": "uri"})["status"] == "OK"
    base = static_files(SHAPES / "square")
    url_body = {"model_id": mid, "model_class": "s", "input": f"{base}/square-04.png", "uid": "url"}
    refused = astica("/model/upload", url_body)  # loopback URL: refused without allow_private_urls
    assert refused["status"] == "ERROR" and "private" in refused["error"]
    bad = astica("/model/upload", {"model_id": mid, "model_class": "s", "input": "file:///etc/passwd"})
    assert bad["status"] == "ERROR" and "http" in bad["error"]
    hello = base64.b64encode(b"hello").decode()
    not_image = astica("/model/upload", {"model_id": mid, "model_class": "s", "input": hello})
    assert not_image["status"] == "ERROR"
    digests = {s["uid"]: s["digest"] for c in astica("/model/view", {"model_id": mid})["dataset"]["class_list"]
               for s in c["samples"]}
    assert digests == {
        "b64": "sha256:" + hashlib.sha256(data).hexdigest(),
        "uri": "sha256:" + hashlib.sha256(png("square-03")).hexdigest(),
    }

    # a server that may fetch private URLs takes the loopback URL
    private = serve_thread(keys=[KEY_A], allow_private_urls=True, rate_limit=None, total_rate_limit=None)
    with httpx.Client(base_url=private.base_url) as c:
        c.post("/model/create", json={"tkn": KEY_A, "dataset_title": "u", "dataset_type": "vision",
                                      "dataset_purpose": "classification"})
        pid = c.post("/model/list", json={"tkn": KEY_A}).json()["dataset_list"][0]["id"]
        r = c.post("/model/upload", json={"tkn": KEY_A, **url_body, "model_id": pid}).json()
        assert r == {"status": "OK", "sample_id": r["sample_id"]}
        ds = c.post("/model/view", json={"tkn": KEY_A, "model_id": pid}).json()["dataset"]
        assert ds["class_list"][0]["samples"][0]["digest"] == "sha256:" + hashlib.sha256(png("square-04")).hexdigest()


def test_errors_use_astica_shape(astica):
    client = astica.client
    r = client.post("/model/list", json={"tkn": "wrong-key"})
    assert r.status_code == 200 and r.json() == {"status": "ERROR", "error": "Invalid API key"}
    r = client.post("/model/list", json={})
    assert r.status_code == 400 and r.json()["status"] == "ERROR" and "tkn" in r.json()["error"]
    r = client.post("/model/view", json={"tkn": KEY_A, "model_id": "12ab"})
    assert r.json() == {"status": "ERROR", "error": "model_id: expected an id (a whole number such as 1495)"}
    r = client.post("/model/view", json={"tkn": KEY_A, "model_id": 999999})
    assert r.status_code == 200 and r.json()["status"] == "ERROR"
    r = client.post("/model/upload", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["status"] == "ERROR"
    r = client.post("/model/nothing", json={"tkn": KEY_A})
    assert r.status_code == 404 and r.json()["status"] == "ERROR"
    r = client.post("/detect", json={"tkn": KEY_A, "model_id": 1, "model_version": "x", "input": "aGVsbG8="})
    assert r.json()["status"] == "ERROR"
    assert KEY_A not in r.text


def test_other_keys_models_are_invisible(astica):
    mid = create(astica, "alice's")
    upload(astica, mid, "a", "circle-04", uid="x")
    assert astica("/model/list", {}, KEY_B)["dataset_list"] == []
    for path, body in [
        ("/model/view", {"model_id": mid}),
        ("/model/upload", {"model_id": mid, "model_class": "a", "input": base64.b64encode(png("circle-05")).decode()}),
        ("/model/model_train", {"model_id": mid}),
        ("/model/model_remove", {"model_id": mid}),
        ("/model/sample_remove", {"sample_uid": "x"}),
    ]:
        assert astica(path, body, KEY_B)["status"] == "ERROR", path
    assert astica("/model/view", {"model_id": mid})["dataset"]["numSample"] == 1


def test_rate_limits_answer_429_with_retry_after(serve_thread):
    handle = serve_thread(keys=[KEY_A, KEY_B], rate_limit=3, total_rate_limit=5)
    with httpx.Client(base_url=handle.base_url) as c:
        codes = [c.post("/model/list", json={"tkn": KEY_A}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.post("/model/list", json={"tkn": KEY_A})
        assert r.status_code == 429
        assert r.json() == {"status": "ERROR", "error": "rate limit exceeded"}
        assert r.headers["retry-after"].isdigit() and 1 <= int(r.headers["retry-after"]) <= 60
        # "The training and inference endpoints are separated. Each endpoint allows up to 90
        # requests per minute": the endpoint is the host, so /model/view shares /model/list's budget
        assert c.post("/model/view", json={"tkn": KEY_A}).status_code == 429
        # total: two more on the inference endpoint pass, the third is over the total of 5
        detect = {"tkn": KEY_A, "model_id": "1", "model_version": "", "input": "aGVsbG8="}
        answers = [c.post("/detect", json=detect) for _ in range(3)]
        assert [a.json()["status"] for a in answers[:2]] == ["ERROR", "ERROR"]  # no such model, yet counted
        assert "rate limit" not in answers[0].json()["error"]
        assert answers[2].status_code == 429
        # another key has its own budget
        assert c.post("/model/list", json={"tkn": KEY_B}).status_code == 200


def test_rate_limit_window_slides(serve_thread):
    handle = serve_thread(keys=[KEY_A], rate_limit=2, total_rate_limit=None, rate_window=1.0)
    with httpx.Client(base_url=handle.base_url) as c:
        assert [c.post("/model/list", json={"tkn": KEY_A}).status_code for _ in range(3)] == [200, 200, 429]
        time.sleep(1.05)
        assert c.post("/model/list", json={"tkn": KEY_A}).status_code == 200


def test_retry_after_is_the_wait_until_the_window_admits_one_more(serve_thread):
    """The limiter is a sliding window (astica: "in any one minute period"), so Retry-After is the
    time until the oldest counted request leaves it: the full window right after a burst, less later."""
    from reconciler.local.serve.ratelimit import SlidingWindowLimiter

    now = [0.0]
    limiter = SlidingWindowLimiter(2, None, clock=lambda: now[0])
    assert limiter.check("k", "/a") is None
    now[0] = 30.0
    assert limiter.check("k", "/a") is None
    now[0] = 31.0
    assert limiter.check("k", "/a") == 29  # the request of t=0 leaves the window at t=60
    now[0] = 59.2
    assert limiter.check("k", "/a") == 1  # 0.8 s, rounded up
    now[0] = 60.0
    assert limiter.check("k", "/a") is None

    handle = serve_thread(keys=[KEY_A], rate_limit=2, total_rate_limit=None, rate_window=6.0)
    with httpx.Client(base_url=handle.base_url) as c:
        assert [c.post("/model/list", json={"tkn": KEY_A}).status_code for _ in range(2)] == [200, 200]
        time.sleep(2.5)
        r = c.post("/model/list", json={"tkn": KEY_A})
        assert r.status_code == 429 and int(r.headers["retry-after"]) in (3, 4)  # ~3.5 s left, not the window


def _trainer_ready() -> bool:
    try:
        from reconciler.local.trainer import train  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _trainer_ready(), reason="the trainer is not in this tree yet")
def test_train_then_detect(astica):
    mid = create(astica, "shapes")
    assert astica("/model/model_train", {"model_id": mid})["status"] == "ERROR"  # needs two classes
    for i in range(24):
        upload(astica, mid, "circle", f"circle-{i:02d}", uid=f"c{i}")
        upload(astica, mid, "square", f"square-{i:02d}", uid=f"s{i}")
    assert astica("/model/model_train", {"model_id": str(mid)}) == {"status": "OK"}
    deadline = time.monotonic() + 120
    while True:
        (entry,) = astica("/model/list", {})["dataset_list"]
        if entry["trained"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert entry["trained"] == 1
    assert len(entry["model_version"]) == 15 and entry["model_version"][8] == "_"
    assert entry["date_trained"] > 0
    unseen = REPO / "examples" / "quickstart" / "unseen"
    for name, want in [("circle-00.png", "circle"), ("square-00.png", "square")]:
        uri = "data:image/png;base64," + base64.b64encode((unseen / name).read_bytes()).decode()
        out = astica("/detect", {"model_id": str(mid), "model_version": entry["model_version"], "input": uri})
        assert out["status"] == "OK", out
        assert out["output"] == want
        assert isinstance(out["confidence"], str) and 0 <= float(out["confidence"]) <= 100
        assert out["model_version"] == entry["model_version"]
    raw = base64.b64encode((unseen / "square-01.png").read_bytes()).decode()
    assert astica("/detect", {"model_id": mid, "input": raw})["output"] == "square"  # latest version by default
    bad = astica("/detect", {"model_id": mid, "model_version": "19990101_000000", "input": raw})
    assert bad["status"] == "ERROR"


# -- shared serve infrastructure, seen through the astica dialect ----------------------


def test_keys_file_json_and_yaml(tmp_path):
    from reconciler.local.serve import load_keys_file

    (tmp_path / "keys.json").write_text(
        '{"keys": [{"key": "k-1", "owner": "team-a", "permissions": ["Model Run"], "projects": [1, "p2"]},'
        ' {"key": "k-2"}]}'
    )
    keys = load_keys_file(tmp_path / "keys.json")
    assert keys["k-1"].owner == "team-a" and keys["k-1"].permissions == frozenset({"Model Run"})
    assert keys["k-1"].project_ids == frozenset({"1", "p2"})
    assert keys["k-2"].owner and keys["k-2"].owner != "k-2"  # an owner derived from the key, not the key
    (tmp_path / "keys.yaml").write_text("keys:\n  - key: secret-value-9\n    permissions: [Fly]\n")
    with pytest.raises(ValueError) as exc:
        load_keys_file(tmp_path / "keys.yaml")
    assert "keys[0].permissions" in str(exc.value) and "Fly" in str(exc.value)
    assert "secret-value-9" not in str(exc.value)


def test_dev_mode_gives_each_key_its_own_data(serve_thread):
    handle = serve_thread(keys=None, rate_limit=None, total_rate_limit=None)
    with httpx.Client(base_url=handle.base_url) as c:
        body = {"dataset_title": "t", "dataset_type": "vision", "dataset_purpose": "classification"}
        assert c.post("/model/create", json={"tkn": "any-1", **body}).json() == {"status": "OK"}
        assert len(c.post("/model/list", json={"tkn": "any-1"}).json()["dataset_list"]) == 1
        assert c.post("/model/list", json={"tkn": "any-2"}).json()["dataset_list"] == []
        assert c.post("/model/list", json={"tkn": ""}).json()["status"] == "ERROR"


def test_permissions_are_enforced(serve_thread):
    handle = serve_thread(keys={"viewer": KeyInfo(owner="o", permissions=frozenset({"Model View"}))},
                          rate_limit=None, total_rate_limit=None)
    with httpx.Client(base_url=handle.base_url) as c:
        assert c.post("/model/list", json={"tkn": "viewer"}).json()["status"] == "OK"
        r = c.post("/model/create", json={"tkn": "viewer", "dataset_title": "t", "dataset_type": "vision",
                                          "dataset_purpose": "classification"}).json()
        assert r["status"] == "ERROR" and "Model Edit" in r["error"]


def test_url_fetcher_refuses_private_hosts_and_caps_size(static_files):
    from reconciler.local.serve.urlfetch import InputError, UrlFetcher

    base = static_files(SHAPES / "circle")
    with pytest.raises(InputError, match="private"):
        UrlFetcher().fetch(base.replace("127.0.0.1", "localhost") + "/circle-00.png")
    assert UrlFetcher(allow_private=True).fetch(base + "/circle-00.png") == png("circle-00")
    with pytest.raises(InputError, match="larger than 100 bytes"):
        UrlFetcher(allow_private=True, max_bytes=100).fetch(base + "/circle-00.png")
    with pytest.raises(InputError, match="HTTP 404"):
        UrlFetcher(allow_private=True).fetch(base + "/missing.png")
    assert UrlFetcher().decode_input("data:text/plain,hi%21") == b"hi!"
    with pytest.raises(InputError, match="only http and https"):
        UrlFetcher().decode_input("ftp://example.org/x.png")


def test_injected_faults_use_the_dialect_shape(serve_thread):
    from reconciler.local.serve import FaultConfig

    slow = serve_thread(keys=[KEY_A], faults=FaultConfig(latency_seconds=0.3), rate_limit=None)
    t0 = time.monotonic()
    assert httpx.post(slow.base_url + "/model/list", json={"tkn": KEY_A}).json()["status"] == "OK"
    assert time.monotonic() - t0 >= 0.3
    throttled = serve_thread(keys=[KEY_A], faults=FaultConfig(throttle_rate=1.0, retry_after=2), rate_limit=None)
    r = httpx.post(throttled.base_url + "/model/list", json={"tkn": KEY_A})
    assert (r.status_code, r.headers["retry-after"], r.json()) == (429, "2", {"status": "ERROR",
                                                                            "error": "rate limit exceeded"})
    failing = serve_thread(keys=[KEY_A], faults=FaultConfig(error_rate=1.0), rate_limit=None)
    r = httpx.post(failing.base_url + "/model/list", json={"tkn": KEY_A})
    assert r.status_code == 500 and r.json()["status"] == "ERROR" and "Traceback" not in r.text
    dropping = serve_thread(keys=[KEY_A], faults=FaultConfig(drop_rate=1.0), rate_limit=None)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(dropping.base_url + "/model/create", json={"tkn": KEY_A, "dataset_title": "d",
                                                              "dataset_type": "vision", "dataset_purpose": "c"})
    # the effect landed although the answer was lost
    assert [m.title for m in dropping.service.list_models(dropping.service and _owner_of(KEY_A))] == ["d"]
    with pytest.raises(ValueError, match="error_rate"):
        FaultConfig(error_rate=1.5)


def _owner_of(key: str) -> str:
    from reconciler.local.serve.auth import key_id

    return key_id(key)


@pytest.mark.parametrize("writer", ["another process", "a thread of serve"])
def test_an_upload_waits_out_a_busy_database_in_a_thread_while_serve_keeps_answering(serve_thread, writer):
    """Small uploads are written on serve's event loop, never waiting there: when another
    writer holds the database, the upload waits in the thread pool, the server answers
    other requests meanwhile, and the rate limit counts the upload once."""
    import sqlite3
    import threading

    handle = serve_thread(keys={KEY_A: KeyInfo(owner="alice")}, rate_limit=4, total_rate_limit=None)
    client = httpx.Client(base_url=handle.base_url, timeout=30)

    def post(path: str, body: dict) -> httpx.Response:
        return client.post(path, json={"tkn": KEY_A, **body})

    assert post("/model/create", {"dataset_title": "m", "dataset_type": "vision",
                                  "dataset_purpose": "classification"}).json() == {"status": "OK"}
    model_id = post("/model/list", {}).json()["dataset_list"][0]["id"]
    body = {"model_id": model_id, "model_class": "circle", "input": base64.b64encode(png("circle-00")).decode()}

    release = threading.Event()
    holding = threading.Event()

    def hold_the_database() -> None:
        if writer == "another process":  # SQLite's lock, as another process's apply would hold it
            other = sqlite3.connect(handle.service.db.path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            holding.set()
            release.wait(30)
            other.execute("COMMIT")
            other.close()
        else:  # serve's own write lock, as a slow write in its thread pool would hold it
            with handle.service.db.write():
                holding.set()
                release.wait(30)

    holder = threading.Thread(target=hold_the_database)
    holder.start()
    holding.wait(10)
    answers: list[httpx.Response] = []
    pending = threading.Thread(target=lambda: answers.append(post("/model/upload", {**body, "uid": "u1"})))
    pending.start()
    try:
        time.sleep(0.3)
        assert not answers, "the upload should wait for the other writer"
        t0 = time.monotonic()
        assert httpx.get(handle.base_url + "/healthz", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 1.0
    finally:
        release.set()
        holder.join(timeout=30)
    pending.join(timeout=30)
    assert answers[0].json()["status"] == "OK" and isinstance(answers[0].json()["sample_id"], int)
    # four training calls a minute (create, list, then uploads): the upload that waited counted
    # once, so one more passes, then 429
    assert post("/model/upload", {**body, "uid": "u2"}).json()["status"] == "OK"
    assert post("/model/upload", {**body, "uid": "u3"}).status_code == 429
    client.close()


def test_big_images_and_urls_are_handled_in_serves_threads_small_images_on_its_loop(serve_thread, static_files,
                                                                                    monkeypatch):
    """Decoding an image over 512x512 pixels or fetching a URL (even one after blanks) would
    stall every request: those uploads are done in the thread pool. They land the same way."""
    import io
    import threading

    from PIL import Image

    from reconciler.local import service as service_module

    decoded_in: list[str] = []
    real_inspect = service_module.inspect_image

    def inspect_image(data: bytes, **kw):
        info = real_inspect(data, **kw)  # raises WouldWait before decoding when over the budget
        decoded_in.append(threading.current_thread().name)
        return info

    monkeypatch.setattr(service_module, "inspect_image", inspect_image)
    handle = serve_thread(keys=[KEY_A], allow_private_urls=True, rate_limit=None, total_rate_limit=None)
    client = httpx.Client(base_url=handle.base_url, timeout=30)

    def post(path: str, body: dict) -> dict:
        return client.post(path, json={"tkn": KEY_A, **body}).json()

    post("/model/create", {"dataset_title": "big", "dataset_type": "vision", "dataset_purpose": "classification"})
    model_id = post("/model/list", {})["dataset_list"][0]["id"]
    buf = io.BytesIO()
    Image.new("RGB", (700, 600), (200, 40, 40)).save(buf, format="PNG")
    big = {"model_id": model_id, "model_class": "red", "uid": "big-1",
           "input": base64.b64encode(buf.getvalue()).decode()}
    got = post("/model/upload", big)
    assert got["status"] == "OK"
    assert post("/model/upload", big) == got  # idempotent by uid, as on the event loop
    small = base64.b64encode(png("circle-00")).decode()
    assert post("/model/upload", {"model_id": model_id, "model_class": "circle", "input": small, "uid": "small-1"}) \
        ["status"] == "OK"
    url = " " * 12 + static_files(SHAPES / "circle") + "/circle-01.png"
    assert post("/model/upload", {"model_id": model_id, "model_class": "circle", "input": url, "uid": "url-1"}) \
        ["status"] == "OK"
    in_pool = [name.startswith("AnyIO worker") for name in decoded_in]
    assert in_pool == [True, True, False, True], decoded_in
    classes = post("/model/view", {"model_id": model_id})["dataset"]["class_list"]
    assert sorted(s["uid"] for c in classes for s in c["samples"]) == ["big-1", "small-1", "url-1"]
    client.close()
