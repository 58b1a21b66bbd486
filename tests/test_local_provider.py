"""LocalProvider: the Provider contract over a real LocalService in tmp_path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.model import (
    Box,
    ImageInput,
    RemoteSample,
    TrainRequest,
    UploadItem,
    config_digest,
    dataset_digest,
    sha256_digest,
)
from reconciler.providers import base as caps
from reconciler.providers import make_provider
from reconciler.providers.base import NotFound, ProviderConfig, ProviderError
from reconciler.providers.local import LocalProvider
from tests.test_local_service import png


@pytest.fixture
def provider(tmp_path: Path):
    p = make_provider(ProviderConfig(name="lab", type="local", workdir=tmp_path))
    yield p
    p.close()


def item(kind: str, seed: int, uid: str | None = None, **kw) -> UploadItem:
    data = png(kind, seed)
    digest = sha256_digest(data)
    return UploadItem(
        uid=uid or f"{kind}-{seed}",
        class_name=kind,
        digest=digest,
        size=len(data),
        filename=f"{kind}-{seed}.png",
        read=lambda: data,
        **kw,
    )


def fill(provider: LocalProvider, n: int = 6, title: str = "Shapes") -> str:
    rid = provider.create_model(title, "vision", "classification", ("demo",))
    for kind in ("circle", "square"):
        for i in range(n):
            provider.upload_sample(rid, item(kind, i))
    return rid


def wait(provider: LocalProvider, rid: str, handle: str):
    deadline = time.monotonic() + 60
    while True:
        status = provider.training_status(rid, handle)
        if status.done or time.monotonic() > deadline:
            return status
        time.sleep(provider.poll_interval)


def test_registry_capabilities_and_data_directory(tmp_path: Path):
    p = make_provider(ProviderConfig(name="lab", type="local", workdir=tmp_path))
    assert isinstance(p, LocalProvider) and p.type == "local"
    assert p.default_rate_limit is None and p.default_total_rate_limit is None
    for cap in (caps.CAP_MODELS, caps.CAP_CLASSES, caps.CAP_DELETE_CLASS, caps.CAP_UPLOAD_BYTES, caps.CAP_UPLOAD_URLS,
                caps.CAP_DELETE_SAMPLE, caps.CAP_CAPTIONS, caps.CAP_BOXES, caps.CAP_CONFIGURE, caps.CAP_TRAIN,
                caps.CAP_MODEL_TYPE, caps.CAP_TRAIN_BASE, caps.CAP_STOP, caps.CAP_VERSIONS, caps.CAP_PREDICT,
                caps.CAP_INFER):
        assert cap in p.capabilities
    assert not (tmp_path / ".modelsync").exists()  # nothing is created before the first call
    assert p.list_models() == []
    assert not (tmp_path / ".modelsync").exists()  # nor by reading: no data directory, no models
    p.create_model("X", "vision", "classification", ())
    assert (tmp_path / ".modelsync" / "local" / "modelsync.db").is_file()
    assert [m.title for m in p.list_models()] == ["X"]
    p.close()

    q = make_provider(ProviderConfig(name="lab", type="local", workdir=tmp_path, path="store/here"))
    q.create_model("X", "vision", "classification", ())
    assert (tmp_path / "store" / "here" / "modelsync.db").is_file()
    q.close()


def test_models_samples_and_view(provider: LocalProvider):
    rid = fill(provider, n=2)
    (summary,) = provider.list_models()
    assert (summary.remote_id, summary.title, summary.num_samples) == (rid, "Shapes", 4)

    # uploading the same uid again is a no-op that answers the same id
    first_id = provider.view_model(rid).samples[0].remote_id
    assert provider.upload_sample(rid, item("circle", 0)) == first_id
    boxed = item("square", 9, caption="a square", boxes=(Box("sq", 1, 2, 10, 12),), url="https://example.org/s9.png")
    provider.upload_sample(rid, boxed)

    remote = provider.view_model(rid)
    assert (remote.title, remote.type, remote.purpose, remote.tags) == ("Shapes", "vision", "classification", ("demo",))
    assert set(remote.classes) == {"circle", "square"} and all(v.isdigit() for v in remote.classes.values())
    assert len(remote.samples) == 5 and remote.versions == [] and remote.training_status is None
    by_uid = {s.uid: s for s in remote.samples}
    assert by_uid["circle-0"].digest == sha256_digest(png("circle", 0))
    assert by_uid["circle-0"].size == len(png("circle", 0)) and by_uid["circle-0"].class_name == "circle"
    s9 = by_uid["square-9"]
    assert s9.caption == "a square" and s9.boxes == (Box("sq", 1.0, 2.0, 10.0, 12.0),)
    assert s9.url == "https://example.org/s9.png"

    with pytest.raises(ProviderError, match="upload sample: sample uid 'circle-0' already exists .* other content"):
        provider.upload_sample(rid, item("circle", 5, uid="circle-0"))
    assert provider.view_model(rid).fingerprint() == remote.fingerprint()


def test_bad_input_and_missing_objects_are_one_line_provider_errors(provider: LocalProvider):
    rid = provider.create_model("M", "vision", "classification", ())
    text = b"not a picture at all"
    bad = UploadItem(uid="t", class_name="c", digest=sha256_digest(text), size=len(text), filename="t.png",
                     read=lambda: text)
    with pytest.raises(ProviderError) as err:
        provider.upload_sample(rid, bad)
    assert str(err.value) == "upload sample: sample 't': not an image (PNG, JPEG, GIF, BMP or WebP)"
    assert err.value.status == 400 and not isinstance(err.value, NotFound)

    changed = item("circle", 1)
    lying = UploadItem(uid="l", class_name="c", digest=sha256_digest(b"other"), size=1, filename="l.png",
                       read=changed.read)
    with pytest.raises(ProviderError, match="upload sample: sample 'l': content is sha256:.*, expected sha256:"):
        provider.upload_sample(rid, lying)

    for call in (lambda: provider.view_model("999"), lambda: provider.view_model("abc"),
                 lambda: provider.delete_model("999"), lambda: provider.upload_sample("999", item("circle", 1))):
        with pytest.raises(NotFound) as nf:
            call()
        assert "\n" not in str(nf.value) and "not found" in str(nf.value)
    with pytest.raises(NotFound, match="view model: model 999: not found"):
        provider.view_model("999")


def test_delete_update_and_classes(provider: LocalProvider):
    rid = fill(provider, n=3)
    remote = provider.view_model(rid)
    by_uid = {s.uid: s for s in remote.samples}

    provider.delete_sample(rid, by_uid["circle-0"])  # by remote id
    provider.delete_sample(rid, RemoteSample(remote_id="", uid="circle-1", class_name="circle"))  # by uid
    provider.delete_sample(rid, by_uid["circle-0"])  # already gone: fine
    provider.update_sample(rid, RemoteSample(remote_id="", uid="square-0", class_name="square"), "cap",
                           (Box("sq", 0, 0, 5, 5),))
    remote = provider.view_model(rid)
    assert sorted(s.uid for s in remote.samples) == ["circle-2", "square-0", "square-1", "square-2"]
    sq0 = next(s for s in remote.samples if s.uid == "square-0")
    assert sq0.caption == "cap" and sq0.boxes == (Box("sq", 0.0, 0.0, 5.0, 5.0),)

    provider.delete_class(rid, "square", remote.classes["square"])
    provider.delete_class(rid, "circle", "")  # found by name
    remote = provider.view_model(rid)
    assert remote.samples == [] and remote.classes == {}

    other = fill(provider, n=1, title="Other")
    foreign = provider.view_model(other).samples[0]
    with pytest.raises(NotFound, match="not in model"):
        provider.delete_sample(rid, foreign)

    provider.configure(rid, {"steps": 50, "learning_rate": 0.2})
    assert provider.view_model(rid).config == {"steps": 50, "learning_rate": 0.2}
    with pytest.raises(ProviderError, match="configure: training.config.bogus"):
        provider.configure(rid, {"bogus": 1})


def test_train_versions_predict_and_infer(provider: LocalProvider):
    rid = fill(provider, n=6)
    config = {"steps": 40}
    request = TrainRequest(model_type="small", base=None, config=config, dataset_digest="",
                           config_digest=config_digest("small", None, config))
    handle = provider.start_training(rid, request)
    assert handle.isdigit()
    status = wait(provider, rid, handle)
    assert status.state == "trained" and status.done, status.error
    v = status.version
    remote = provider.view_model(rid)
    assert v.dataset_digest == dataset_digest((s.class_name, s.digest) for s in remote.samples)
    assert v.config_digest == request.config_digest
    assert v.trained_at.endswith("Z") and v.trained_at[4] == "-" and v.trained_at[10] == "T"
    assert 0 <= v.metrics["accuracy"] <= 1
    assert remote.versions == [v] and provider.list_versions(rid) == [v] and remote.training_status == "trained"

    inputs = [ImageInput("a.png", png("circle", 300)), ImageInput("b.png", png("square", 300))]
    preds = provider.predict(rid, None, inputs)
    assert [p.input for p in preds] == ["a.png", "b.png"]
    assert all(p.label in ("circle", "square") and 0 <= p.confidence <= 1 and p.scores for p in preds)
    assert provider.predict(rid, v.version, [ImageInput("a.png", png("circle", 300))])[0] == preds[0]
    with pytest.raises(NotFound, match="predict: version 'nope'"):
        provider.predict(rid, "nope", [ImageInput("a.png", png())])

    job = provider.start_inference(rid, None, [ImageInput(f"i{i}.png", png("circle", 400 + i)) for i in range(5)])
    deadline = time.monotonic() + 60
    status = provider.inference_status(job)
    while not status.finished and time.monotonic() < deadline:
        time.sleep(provider.poll_interval)
        status = provider.inference_status(job)
    assert status.state == "Finished" and status.done == status.total == 5, status.error
    assert [r.input for r in status.results] == [f"i{i}.png" for i in range(5)]

    # a second start while one runs conflicts; stop is idempotent
    long = TrainRequest("small", None, {"steps": 100_000}, "", "")
    handle = provider.start_training(rid, long)
    with pytest.raises(ProviderError, match="start training: Model is already training"):
        provider.start_training(rid, long)
    provider.stop_training(rid, handle)
    assert wait(provider, rid, handle).state == "canceled"
    provider.stop_training(rid, handle)
    assert provider.list_versions(rid) == [v]


def test_training_status_of_a_job_of_another_model_is_not_found(provider: LocalProvider):
    a = fill(provider, n=3)
    b = fill(provider, n=3, title="B")
    handle = provider.start_training(a, TrainRequest("small", None, {"steps": 10}, "", ""))
    with pytest.raises(NotFound):
        provider.training_status(b, handle)
    assert wait(provider, a, handle).state == "trained"
    with pytest.raises(ProviderError, match="start training: model .*: training needs samples in at least two"):
        c = provider.create_model("C", "vision", "classification", ())
        provider.upload_sample(c, item("circle", 1))
        provider.start_training(c, TrainRequest("small", None, {}, "", ""))
