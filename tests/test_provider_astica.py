"""The astica provider: a full lifecycle against `modelsync serve` on loopback, and the
vendor quirks (no id from create, non-idempotent uploads) against a scripted vendor."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from reconciler.model import ImageInput, RemoteSample, TrainRequest, UploadItem, sha256_digest
from reconciler.providers import make_provider
from reconciler.providers.astica import AsticaProvider, parse_confidence
from reconciler.providers.base import NotFound, ProviderConfig, ProviderError
from reconciler.providers.http import HttpClient

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "quickstart" / "data"
UNSEEN = REPO / "examples" / "quickstart" / "unseen"
KEY_A, KEY_B = "astica-key-a-7777", "astica-key-b-8888"


def provider(base_url: str, key: str = KEY_A, rate_limit: int = 6000, **options) -> AsticaProvider:
    """Limits far above the tests' pace (pacing itself is tested in test_http_client)."""
    options.setdefault("backoff_base", 0.05)
    options.setdefault("total_rate_limit", 2 * rate_limit)
    cfg = ProviderConfig(name="prod", type="astica", api_key=key, base_url=base_url, rate_limit=rate_limit,
                         options=options)
    p = make_provider(cfg)
    assert isinstance(p, AsticaProvider)
    return p


def item(path: Path, uid: str | None = None, url: str | None = None) -> UploadItem:
    data = path.read_bytes()
    return UploadItem(
        uid=uid or f"u-{path.stem}",
        class_name=path.parent.name,
        digest=sha256_digest(data),
        size=len(data),
        filename=path.name,
        read=path.read_bytes,
        url=url,
    )


def _trainer_ready() -> bool:
    try:
        from reconciler.local.trainer import train  # noqa: F401
    except ImportError:
        return False
    return True


def test_full_cycle_against_serve(serve_process, static_files):
    server = serve_process(keys=[KEY_A, KEY_B], allow_private_urls=True, rate_limit=None, total_rate_limit=None)
    files_url = static_files(DATA / "square")
    p = provider(server.base_url)
    try:
        assert p.list_models() == []
        mid = p.create_model("Shapes", "vision", "classification", ("demo", "ci"))
        (summary,) = p.list_models()
        assert (summary.remote_id, summary.title) == (mid, "Shapes")

        circles = sorted((DATA / "circle").glob("*.png"))
        squares = sorted((DATA / "square").glob("*.png"))
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda f: p.upload_sample(mid, item(f)), circles + squares[:-1]))
        assert all(ids)  # serve answers the sample id (extension)
        url_item = item(squares[-1], url=f"{files_url}/{squares[-1].name}")
        p.upload_sample(mid, url_item)
        p.upload_sample(mid, item(circles[0]))  # same uid and content again: no duplicate

        model = p.view_model(mid)
        assert (model.title, model.type, model.purpose, model.tags) == ("Shapes", "vision", "classification",
                                                                        ("demo", "ci"))
        assert set(model.classes) == {"circle", "square"}
        by_uid = {s.uid: s for s in model.samples}
        assert len(model.samples) == 48 == len(by_uid)
        assert by_uid[url_item.uid].digest == url_item.digest
        assert by_uid["u-circle-00"].digest == sha256_digest(circles[0].read_bytes())
        assert by_uid["u-circle-00"].size == circles[0].stat().st_size
        assert model.versions == [] and model.training_status is None

        p.delete_sample(mid, by_uid["u-circle-01"])  # by remote id
        p.delete_sample(mid, RemoteSample(remote_id="", uid="u-circle-02", class_name="circle"))  # by uid
        p.delete_sample(mid, RemoteSample(remote_id="", uid="u-circle-02", class_name="circle"))  # gone: fine
        p.upload_sample(mid, item(DATA / "circle" / "circle-01.png", uid="extra"))
        odd = DATA / "circle" / "circle-11.png"
        p.upload_sample(mid, UploadItem("odd", "triangle", "", 0, "x.png", odd.read_bytes))
        model = p.view_model(mid)
        uids = {s.uid for s in model.samples}
        assert {"extra", "odd"} <= uids and "u-circle-01" not in uids
        p.delete_class(mid, "triangle", model.classes["triangle"])
        model = p.view_model(mid)
        assert set(model.classes) == {"circle", "square"} and len(model.samples) == 47

        if _trainer_ready():
            req = TrainRequest("small", None, {}, "sha256:x", "sha256:y")
            handle = p.start_training(mid, req)
            assert handle == ""
            deadline = time.monotonic() + 120
            status = p.training_status(mid, handle)
            while not status.done and time.monotonic() < deadline:
                time.sleep(0.3)
                status = p.training_status(mid, handle)
            assert status.state == "trained", status
            version = status.version
            assert version is not None and len(version.version) == 15 and version.trained_at
            assert p.list_versions(mid)[0].version == version.version
            assert p.view_model(mid).versions[0].version == version.version
            images = [ImageInput(name=f.name, data=f.read_bytes()) for f in sorted(UNSEEN.glob("*.png"))]
            preds = p.predict(mid, None, images)
            assert [pr.input for pr in preds] == [i.name for i in images]
            for pr in preds:
                assert pr.label == pr.input.split("-")[0]
                assert 0.0 <= pr.confidence <= 1.0 and pr.scores
            assert p.predict(mid, version.version, images[:1])[0].label == "circle"

        p.delete_model(mid)
        assert p.list_models() == []
        p.delete_model(mid)  # already gone: no error
        with pytest.raises(NotFound):
            p.view_model(mid)
    finally:
        p.close()
    assert KEY_A not in server.log() and KEY_B not in server.log()


def test_wrong_key_and_other_keys_models(serve_process):
    server = serve_process(keys=[KEY_A, KEY_B], rate_limit=None, total_rate_limit=None)
    a, b, bad = provider(server.base_url), provider(server.base_url, KEY_B), provider(server.base_url, "nope-key-1")
    try:
        mid = a.create_model("private", "vision", "classification", ())
        with pytest.raises(ProviderError) as exc:
            bad.list_models()
        assert str(exc.value) == "astica list models: Invalid API key (HTTP 200)"
        assert b.list_models() == []
        with pytest.raises(NotFound):
            b.view_model(mid)
        with pytest.raises(ProviderError):
            b.upload_sample(mid, item(DATA / "circle" / "circle-00.png"))
        assert [m.title for m in a.list_models()] == ["private"]
    finally:
        for p in (a, b, bad):
            p.close()


def test_a_full_disk_on_the_server_is_a_507_naming_no_server_path(serve_thread, monkeypatch):
    """The server's disk fills while it stores an uploaded image: astica's error shape with 507
    (not retried: waiting will not free the disk), nothing stored, and the next upload works."""
    import sqlite3

    from reconciler.local.blobs import BlobStore

    server = serve_thread(keys=[KEY_A], rate_limit=None, total_rate_limit=None)
    p = provider(server.base_url)
    try:
        mid = p.create_model("full", "vision", "classification", ())

        def no_space(*args) -> None:  # a small image's blob is a row, stored with its sample
            raise sqlite3.OperationalError("database or disk is full")

        with monkeypatch.context() as m:
            m.setattr(BlobStore, "put_in", no_space)
            with pytest.raises(ProviderError) as exc:
                p.upload_sample(mid, item(DATA / "circle" / "circle-00.png"))
        assert exc.value.status == 507 and p.stats.retries == 0
        assert str(exc.value) == (
            "astica upload u-circle-00: insufficient storage: the server could not store this (HTTP 507)"
        )
        assert str(server.data_dir) not in str(exc.value)
        assert p.view_model(mid).samples == []
        assert p.upload_sample(mid, item(DATA / "circle" / "circle-00.png")) is not None
    finally:
        p.close()


def test_missing_key_is_a_clear_error():
    with pytest.raises(ProviderError, match="api_key"):
        AsticaProvider(ProviderConfig(name="prod", type="astica"))


def test_confidence_strings():
    assert parse_confidence("100") == 1.0
    assert parse_confidence("87.5") == pytest.approx(0.875)
    assert parse_confidence("n/a") == 0.0


# -- a scripted astica that loses answers and does NOT deduplicate -----------------------


class LossyAstica:
    """Stores every upload it receives (duplicates included) and loses the first answer
    of each uid and of the first create: the effect lands, the client sees a timeout."""

    def __init__(self) -> None:
        self.models: list[dict] = []
        self.samples: list[dict] = []
        self.lost: set[str] = set()
        self.upload_requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        path = request.url.path
        if path == "/model/create":
            self.models.append({"id": 100 + len(self.models), "title": body["dataset_title"]})
            if "create" not in self.lost:
                self.lost.add("create")
                raise httpx.ReadTimeout("answer lost")
            return httpx.Response(200, json={"status": "OK"})
        if path == "/model/list":
            return httpx.Response(200, json={"status": "OK", "dataset_list": self.models})
        if path == "/model/view":
            samples = [{"id": i, "uid": s["uid"], "size": 0.001} for i, s in enumerate(self.samples)]
            dataset = {**self.models[0], "class_list": [{"id": 1, "title": "circle", "samples": samples}]}
            return httpx.Response(200, json={"status": "OK", "dataset": dataset})
        if path == "/model/upload":
            self.upload_requests += 1
            self.samples.append({"uid": body["uid"]})
            if body["uid"] not in self.lost:
                self.lost.add(body["uid"])
                raise httpx.RemoteProtocolError("connection dropped")
            return httpx.Response(200, json={"status": "OK"})
        return httpx.Response(200, json={"status": "ERROR", "error": "unknown"})


def test_lost_answers_are_checked_before_resending():
    vendor = LossyAstica()
    p = provider("http://astica.test")
    p.http = HttpClient("http://astica.test", vendor="astica", transport=httpx.MockTransport(vendor),
                        backoff_base=0.01, secrets=(KEY_A,), stats=p.stats)
    mid = p.create_model("m", "vision", "classification", ())
    assert mid == "100" and len(vendor.models) == 1  # not created twice
    for f in sorted((DATA / "circle").glob("*.png"))[:5]:
        p.upload_sample(mid, item(f))
    uids = [s["uid"] for s in vendor.samples]
    assert len(uids) == len(set(uids)) == 5 and vendor.upload_requests == 5
    assert p.stats.retries == 0  # lost answers were looked up, not re-sent
