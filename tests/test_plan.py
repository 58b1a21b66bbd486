"""The diff and plan on plain data: exact operations for each kind of change, and properties."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.model import (
    DesiredModel,
    DesiredSample,
    RemoteModel,
    RemoteSample,
    TrainingSettings,
    VersionInfo,
    dataset_digest,
    derived_uid,
    sha256_digest,
)
from reconciler.plan import Plan, build_plan, plan_model
from reconciler.providers.base import (
    CAP_CAPTIONS,
    CAP_CLASSES,
    CAP_DELETE_CLASS,
    CAP_DELETE_SAMPLE,
    CAP_MODELS,
    CAP_SAMPLE_UIDS,
    CAP_TRAIN,
    CAP_UPLOAD_BYTES,
)
from reconciler.state import ModelState, State

CAPS = frozenset(
    {CAP_MODELS, CAP_CLASSES, CAP_DELETE_CLASS, CAP_UPLOAD_BYTES, CAP_DELETE_SAMPLE, CAP_TRAIN, CAP_CAPTIONS}
)


def sample(cls: str, content: str, uid: str | None = None, caption: str | None = None) -> DesiredSample:
    digest = sha256_digest(content.encode())
    return DesiredSample(
        uid=uid or derived_uid(digest),
        class_name=cls,
        digest=digest,
        size=len(content),
        source=f"data/{cls}/{content}.png",
        caption=caption,
        user_uid=uid is not None,
    )


def desired(*samples: DesiredSample, auto: bool = True, prune: str = "managed", classes=None) -> DesiredModel:
    return DesiredModel(
        key="shapes",
        provider="lab",
        provider_type="local",
        title="Shapes",
        type="vision",
        purpose="classification",
        tags=(),
        classes=tuple(sorted(classes or {s.class_name for s in samples})),
        samples={s.uid: s for s in samples},
        training=TrainingSettings(auto=auto, config={"steps": 10}),
        prune=prune,
    )


_ids = itertools.count(1)


def remote_of(model: DesiredModel, trained: bool = True) -> RemoteModel:
    """The remote exactly as the desired model would leave it."""
    samples = [
        RemoteSample(str(next(_ids)), s.uid, s.class_name, s.size, s.digest, s.caption) for s in model.samples.values()
    ]
    versions = []
    if trained:
        versions = [VersionInfo("20260101_000000", model.dataset_digest, model.config_digest)]
    return RemoteModel(
        remote_id="1",
        title=model.title,
        classes={c: str(i) for i, c in enumerate(model.classes, 100)},
        samples=samples,
        versions=versions,
    )


def ops_of(model, remote, mstate=None, caps=CAPS):
    ops = plan_model(model, remote, mstate, caps).operations
    return [(o.op, o.class_name, o.uid) for o in ops]


A, B, C = sample("circle", "a"), sample("circle", "b"), sample("square", "c")


def test_new_model_creates_uploads_and_trains():
    model = desired(A, B, C)
    ops = ops_of(model, None)
    assert ops[0] == ("create_model", None, None)
    assert sorted(o for o in ops if o[0] == "upload_sample") == sorted(
        ("upload_sample", s.class_name, s.uid) for s in (A, B, C)
    )
    assert ops[-1][0] == "train"


def test_in_sync_model_plans_nothing():
    model = desired(A, B, C)
    assert ops_of(model, remote_of(model)) == []


def test_added_sample_uploads_and_retrains_with_reason():
    old = desired(A, C)
    new = desired(A, B, C)
    ops, *_ = plan_model(new, remote_of(old), None, CAPS)
    assert [(o.op, o.uid) for o in ops] == [("upload_sample", B.uid), ("train", None)]
    train = ops[-1]
    assert train.dataset_digest == new.dataset_digest
    assert train.previous_dataset_digest == old.dataset_digest
    assert "1 sample added" in train.reason


def test_removed_managed_sample_is_deleted():
    old = desired(A, B, C)
    new = desired(A, C)
    assert ops_of(new, remote_of(old)) == [("delete_sample", "circle", B.uid), ("train", None, None)]


def test_moved_sample_deletes_before_uploading():
    old = desired(A, B, C)
    moved = DesiredSample(B.uid, "square", B.digest, B.size, B.source)
    new = desired(A, moved, C)
    ops = ops_of(new, remote_of(old))
    assert ops[:2] == [("delete_sample", "circle", B.uid), ("upload_sample", "square", B.uid)]


def test_changed_bytes_under_user_uid_replaces_the_sample():
    old = desired(A, sample("circle", "v1", uid="hero"), C)
    new = desired(A, sample("circle", "v2", uid="hero"), C)
    assert ops_of(new, remote_of(old))[:2] == [("delete_sample", "circle", "hero"), ("upload_sample", "circle", "hero")]


def test_changed_bytes_without_uid_is_a_new_sample():
    old = desired(A, sample("circle", "v1"), C)
    v2 = sample("circle", "v2")
    new = desired(A, v2, C)
    ops = ops_of(new, remote_of(old))
    assert ("upload_sample", "circle", v2.uid) in ops
    assert ("delete_sample", "circle", sample("circle", "v1").uid) in ops


def test_foreign_samples_are_left_alone_unless_prune_all():
    model = desired(A, B, C)
    remote = remote_of(model)
    remote.samples.append(RemoteSample("900", "their-own", "circle"))
    ops, _, unmanaged, *_ = plan_model(model, remote, None, CAPS)
    assert unmanaged == 1
    assert not [o for o in ops if o.op == "delete_sample"]
    ops, _, unmanaged, *_ = plan_model(desired(A, B, C, prune="all"), remote, None, CAPS)
    assert [(o.op, o.uid) for o in ops if o.op == "delete_sample"] == [("delete_sample", "their-own")]


def test_a_uid_less_remote_sample_with_the_declared_class_and_bytes_is_adopted_not_copied():
    """A vendor without uids and a lost state: the same class and reported digest is the declared
    sample; another class, a URL alone, or a second copy is not; each remote sample is adopted
    once. Where the vendor keeps uids, a uid-less sample is someone else's and stays foreign."""
    model = desired(A, B, C)
    remote = remote_of(model)
    remote.samples = [dataclasses.replace(s, uid=None) for s in remote.samples]
    assert ops_of(model, remote) == []
    assert ("upload_sample", "circle", A.uid) in ops_of(model, remote, caps=CAPS | {CAP_SAMPLE_UIDS})
    moved = [dataclasses.replace(s, class_name="square") if s.digest == A.digest else s for s in remote.samples]
    remote.samples = moved
    assert ("upload_sample", "circle", A.uid) in ops_of(model, remote)
    by_url = dataclasses.replace(C, url="https://example.com/c.png", source="https://example.com/c.png")
    url_model = desired(A, B, by_url)
    remote = remote_of(url_model)
    remote.samples = [dataclasses.replace(s, uid=None, digest=None, url=by_url.url) for s in remote.samples]
    assert sorted(o for o in ops_of(url_model, remote) if o[0] == "upload_sample") == sorted(
        ("upload_sample", s.class_name, s.uid) for s in (A, B, by_url)
    )  # the bytes behind a URL may have changed since it was fetched
    twice = remote_of(desired(A))
    (only,) = twice.samples
    twice.samples = [dataclasses.replace(only, uid=None), dataclasses.replace(only, uid=None, remote_id="copy")]
    unmanaged = plan_model(desired(A), twice, None, CAPS).unmanaged
    assert unmanaged == 1  # one copy adopted, the other stays foreign


def test_user_uid_known_to_state_is_managed():
    model = desired(A, C)
    remote = remote_of(desired(A, C))
    remote.samples.append(RemoteSample("901", "hero", "circle", digest=sha256_digest(b"x")))
    mstate = ModelState("lab", "local", "Shapes", "1", samples={"hero": {"class": "circle", "digest": "sha256:x"}})
    assert ("delete_sample", "circle", "hero") in ops_of(model, remote, mstate)


def test_dropped_class_is_one_delete_class():
    old = desired(A, B, C, sample("triangle", "t1"), sample("triangle", "t2"))
    new = desired(A, B, C, sample("triangle", "t1"), sample("triangle", "t2"), sample("square", "d"))
    new = desired(*(s for s in new.samples.values() if s.class_name != "triangle"))
    ops, *_ = plan_model(new, remote_of(old), None, CAPS)
    kinds = [(o.op, o.class_name, o.samples) for o in ops if o.op.startswith("delete")]
    assert kinds == [("delete_class", "triangle", 2)]


def test_duplicate_uid_on_remote_is_cleaned_up():
    model = desired(A, B, C)
    remote = remote_of(model)
    remote.samples.append(RemoteSample("999", A.uid, "circle", A.size, A.digest))
    ops, *_ = plan_model(model, remote, None, CAPS)
    assert [(o.op, o.uid, o.reason) for o in ops] == [("delete_sample", A.uid, "duplicate of the same uid")]


def test_config_change_retrains_and_says_why():
    model = desired(A, B, C)
    remote = remote_of(model)
    changed = dataclasses.replace(model, training=TrainingSettings(config={"steps": 20}))
    mstate = ModelState(
        "lab", "local", "Shapes", "1", versions=[{"version": "20260101_000000", "config": {"steps": 10}}]
    )
    ops, *_ = plan_model(changed, remote, mstate, CAPS)
    assert [o.op for o in ops] == ["train"]
    assert "steps: 10 -> 20" in ops[0].reason


def test_mass_delete_is_flagged():
    old = desired(A, B, C, sample("square", "d"))
    new = desired(A, sample("square", "e"))
    mass = plan_model(new, remote_of(old), None, CAPS).mass
    assert mass == (3, 4)


def test_one_class_never_trains():
    model = desired(A, B)
    assert [o for o in ops_of(model, None) if o[0] == "train"] == []


def test_plan_json_round_trip():
    model = desired(A, B, C)
    plan = build_plan({"shapes": model}, {"shapes": None}, State(), {"lab": CAPS})
    again = Plan.from_json(plan.to_json())
    assert again.operations == plan.operations
    assert again.to_json() == plan.to_json()
    body = plan.to_json()
    assert body["summary"] == {"create_model": 1, "upload_sample": 3, "train": 1}
    assert body["operations"][1]["class"] in ("circle", "square")


def test_changed_model_attributes_are_reported_not_planned():
    model = dataclasses.replace(desired(A, B, C), tags=("demo", "new"), purpose="detection")
    remote = dataclasses.replace(remote_of(desired(A, B, C)), type="vision", purpose="classification",
                                 tags=("demo",))
    plan = build_plan({"shapes": model}, {"shapes": remote}, State(), {"lab": CAPS})
    attribute_warnings = [w for w in plan.warnings if "cannot be changed after creation" in w]
    assert [w.split(" is ")[0] for w in attribute_warnings] == ["shapes: purpose", "shapes: tags"]
    assert not any(o.op in ("create_model", "delete_model") for o in plan.operations)
    quiet = dataclasses.replace(remote, tags=(), purpose=None)  # a vendor that reports neither
    plan = build_plan({"shapes": model}, {"shapes": quiet}, State(), {"lab": CAPS})
    assert not [w for w in plan.warnings if "cannot be changed after creation" in w]


# --------------------------------------------------------------------------- properties


def simulate(model: DesiredModel, remote: RemoteModel | None, ops) -> RemoteModel:
    """Apply operations to a remote snapshot the way a provider would."""
    remote = (
        RemoteModel("1", model.title)
        if remote is None
        else RemoteModel(
            remote.remote_id,
            remote.title,
            classes=dict(remote.classes),
            samples=list(remote.samples),
            versions=list(remote.versions),
        )
    )
    for op in ops:
        if op.op == "delete_sample":
            remote.samples = [s for s in remote.samples if s.remote_id != op.remote_id]
        elif op.op == "delete_class":
            remote.samples = [s for s in remote.samples if s.class_name != op.class_name]
            remote.classes.pop(op.class_name, None)
        elif op.op == "upload_sample":
            remote.classes.setdefault(op.class_name, str(next(_ids)))
            remote.samples.append(RemoteSample(str(next(_ids)), op.uid, op.class_name, op.size, op.digest))
        elif op.op == "train":
            remote.versions.insert(0, VersionInfo(f"v{next(_ids)}", op.dataset_digest, op.config_digest))
    return remote


contents = st.text(alphabet="abcdef", min_size=1, max_size=4)
sample_lists = st.lists(st.tuples(st.sampled_from(["circle", "square", "star"]), contents), max_size=12)


def build(pairs) -> DesiredModel:
    seen, out = set(), []
    for cls, content in pairs:
        if content in seen:  # one image, one class
            continue
        seen.add(content)
        out.append(sample(cls, content))
    return desired(*out, classes={c for c, _ in pairs} or {"circle"})


@settings(max_examples=150, deadline=None)
@given(before=sample_lists, after=sample_lists, trained=st.booleans())
def test_applying_the_plan_reaches_the_desired_state_and_replanning_is_empty(before, after, trained):
    old, new = build(before), build(after)
    remote = remote_of(old, trained=trained) if before else None
    ops, *_ = plan_model(new, remote, None, CAPS)
    result = simulate(new, remote, ops)
    got = sorted((s.uid, s.class_name, s.digest) for s in result.samples)
    want = sorted((s.uid, s.class_name, s.digest) for s in new.samples.values())
    assert got == want
    # planning again against what the plan produced yields nothing
    again, *_ = plan_model(new, result, None, CAPS)
    assert again == []
    if any(o.op == "train" for o in ops):
        assert result.versions[0].dataset_digest == dataset_digest(want_pairs(new))


def want_pairs(model: DesiredModel):
    return [(s.class_name, s.digest) for s in model.samples.values()]


def test_prune_none_keeps_managed_samples_as_such_not_as_unmanaged():
    remote = remote_of(desired(A, B, C))
    remote.samples.append(RemoteSample("900", "their-own", "circle"))
    found = plan_model(desired(A, C, prune="none"), remote, None, CAPS)
    assert not [o for o in found.operations if o.op == "delete_sample"]
    assert (found.unmanaged, found.kept) == (1, 1)  # their-own is foreign; B was uploaded by modelsync
    plan = build_plan({"shapes": desired(A, C, prune="none")}, {"shapes": remote}, State(), {"lab": CAPS})
    assert (plan.unmanaged, plan.no_longer_declared) == ({"shapes": 1}, {"shapes": 1})
    assert Plan.from_json(plan.to_json()).no_longer_declared == {"shapes": 1}


def test_dataset_and_config_changed_together_are_both_the_reason():
    model = desired(A, B, C)
    remote = remote_of(model)
    mstate = ModelState(
        "lab", "local", "Shapes", "1", versions=[{"version": "20260101_000000", "config": {"steps": 10}}]
    )
    changed = dataclasses.replace(
        desired(A, B, C, sample("square", "d")), training=TrainingSettings(config={"steps": 20})
    )
    found = plan_model(changed, remote, mstate, CAPS)
    (train,) = [o for o in found.operations if o.op == "train"]
    assert train.reason.startswith("dataset ") and ", 1 sample added; config " in train.reason
    assert train.reason.endswith("steps: 10 -> 20")
    assert (found.train.dataset_changed, found.train.config_changed) == (True, True)


def test_a_mass_delete_is_a_plan_warning_too():
    old = desired(A, B, C, sample("square", "d"))
    plan = build_plan({"shapes": desired(A)}, {"shapes": remote_of(old)}, State(), {"lab": CAPS})
    assert plan.mass_deletes == {"shapes": (3, 4)}
    assert plan.to_json()["warnings"] == ["shapes: this plan removes 3 of 4 samples; apply needs --allow-mass-delete"]


def test_config_changes_from_or_to_nothing_name_each_key():
    from reconciler.plan import config_changes

    assert config_changes({}, {"steps": 300, "learning_rate": 0.2}) == (
        "learning_rate: (unset) -> 0.2",
        "steps: (unset) -> 300",
    )
    assert config_changes({"steps": 300}, {}) == ("steps: 300 -> (unset)",)
    assert config_changes({"steps": 200}, {"steps": 300}) == ("steps: 200 -> 300",)
