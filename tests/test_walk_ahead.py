"""The walk ahead: a plan walks its directory sources in a forked child while it reads the
state and the remote. What it finds must be exactly what a walk in the process finds, a
child that fails must only cost time, and reading the remote early must never send
anything for a spec whose sources do not resolve."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

from reconciler import walkahead
from reconciler.resolve import resolve
from reconciler.sources import SourceError, walk_images
from reconciler.walkahead import WalkAhead, spec_directories
from specs import SpecError, load_spec
from tests.cli_helpers import make_png, run_cli, write_spec

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the walk ahead forks")


def _tree(root: Path) -> None:
    """Images at several depths, with what a walk must skip: hidden entries, other files."""
    for i in range(12):
        make_png(root / "data" / "circle" / f"c{i:02d}.png", "circle", i)
    make_png(root / "data" / "circle" / "deeper" / "d0.PNG", "circle", 100)
    make_png(root / "data" / "circle" / "a.b" / "x.png", "circle", 101)  # sorts before "a/"...
    make_png(root / "data" / "circle" / "a" / "y.png", "circle", 102)
    make_png(root / "data" / "circle" / ".hidden" / "h.png", "circle", 103)
    make_png(root / "data" / "circle" / ".h.png", "circle", 104)
    (root / "data" / "circle" / "notes.txt").write_text("not an image")
    for i in range(5):
        make_png(root / "data" / "square" / f"s{i}.png", "square", 200 + i)
    make_png(root / "data" / "single.png", "square", 300)


SPEC = """version: 1
models:
  shapes:
    classes:
      circle:
        samples: [data/circle]
      square:
        samples:
          - path: ./data/square/
          - data/single.png
          - data/s*.png
  other:
    classes:
      square:
        samples: ["file://{root}/data/square"]
    training: {{auto: false}}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    _tree(tmp_path)
    write_spec(tmp_path, SPEC.format(root=tmp_path))
    return tmp_path


def _no_walk_here(monkeypatch) -> None:
    """From now on, a walk in this process fails the test (the child was forked before)."""

    def refuse(full: str, shown: str):
        raise AssertionError(f"{shown} was walked in the parent, not ahead")

    monkeypatch.setattr(walkahead, "walk_images", refuse)


def _resolved(spec, project: Path, walk=None) -> dict:
    models = resolve(spec, project, walk=walk).models
    return {key: sorted((s.uid, s.class_name, s.source, s.size) for s in m.samples.values())
            for key, m in models.items()}


def test_the_child_walks_every_directory_source_as_the_process_would(project: Path, monkeypatch):
    spec = load_spec(project / "modelsync.yaml")
    directories = spec_directories(spec)
    assert {shown for _, shown in directories} == {"./data/square/", "data/circle", str(project / "data" / "square")}
    walked_here = {d: walk_images(*d) for d in directories}
    expected = _resolved(spec, project)
    with WalkAhead(directories) as ahead, WalkAhead(directories) as for_resolve:
        _no_walk_here(monkeypatch)
        assert {d: ahead(*d) for d in directories} == walked_here
        assert _resolved(spec, project, for_resolve) == expected
    circle = walked_here[next(d for d in directories if d[1] == "data/circle")].display
    assert circle == sorted(circle) and len(circle) == 15  # nested, sorted; hidden entries and non-images skipped
    assert {"data/circle/a.b/x.png", "data/circle/a/y.png", "data/circle/deeper/d0.PNG"} < set(circle)


def test_a_child_that_fails_only_costs_time(project: Path, monkeypatch):
    spec = load_spec(project / "modelsync.yaml")
    expected = _resolved(spec, project)

    def die(directories, data, notices, parent):
        os._exit(3)  # before sending anything, like a child killed by the OOM killer

    monkeypatch.setattr(walkahead, "_send_walks", die)
    with WalkAhead(spec_directories(spec)) as walk:
        assert _resolved(spec, project, walk) == expected


def test_a_directory_the_child_cannot_read_is_the_same_error_at_its_spec_position(project: Path, monkeypatch):
    def unreadable(full: str, shown: str):
        raise SourceError(f"cannot read directory {shown}/a: Permission denied")

    monkeypatch.setattr(walkahead, "walk_images", unreadable)  # inherited by the child
    spec = load_spec(project / "modelsync.yaml")
    with WalkAhead(spec_directories(spec)) as walk, pytest.raises(SpecError) as caught:
        monkeypatch.undo()  # the parent could read it: the error must be the child's
        resolve(spec, project, walk=walk)
    lines = [str(d) for d in caught.value.diagnostics]
    assert any(line.endswith("cannot read directory data/circle/a: Permission denied") for line in lines), lines


def test_a_directory_declared_twice_is_walked_again_without_reading_ahead(project: Path, monkeypatch):
    spec = load_spec(project / "modelsync.yaml")
    directories = spec_directories(spec)
    first, rest = directories[0], directories[1:]
    expected = {d: walk_images(*d) for d in directories}
    with WalkAhead(directories) as walk:
        assert walk(*first) == expected[first]  # the child's
        assert walk(*first) == expected[first]  # asked again: walked here, at once...
        assert not walk._received  # ...not after reading (and holding) everything the child still sends
        _no_walk_here(monkeypatch)
        assert [walk(*d) for d in rest] == [expected[d] for d in rest]  # the rest: still the child's


def test_a_plan_that_stops_early_leaves_no_child_behind(project: Path):
    spec = load_spec(project / "modelsync.yaml")
    walk = WalkAhead(spec_directories(spec))
    pid = walk._pid
    assert pid > 0
    walk.close()  # never read: an error elsewhere in the plan
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped


def test_a_plan_sees_the_same_samples_with_and_without_the_walk_ahead(project: Path, monkeypatch):
    with_ahead = run_cli(project, "plan", "--json")
    assert with_ahead.code == 0, with_ahead.err
    monkeypatch.setattr(WalkAhead, "_start", lambda self, directories: None)  # as on a platform without fork
    without = run_cli(project, "plan", "--json")
    assert without.code == 0, without.err

    def uploads(result) -> list:
        return sorted((op["model"], op["uid"], op["source"]) for op in result.json()["operations"]
                      if op["op"] == "upload_sample")

    assert uploads(with_ahead) == uploads(without) and len(uploads(without)) == 15 + 5 + 1 + 5


@contextlib.contextmanager
def _listener():
    """A port that accepts connections but never answers; yields (port, accepted-so-far)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)

    def connections() -> int:
        n = 0
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    try:
        yield sock.getsockname()[1], connections
    finally:
        sock.close()


def test_a_vendor_is_not_read_before_the_sources_resolve(project: Path, monkeypatch):
    monkeypatch.setenv("MODELSYNC_TEST_ASTICA_KEY", "k-1234")
    with _listener() as (port, connections):
        write_spec(
            project,
            "version: 1\nproviders:\n  prod:\n    type: astica\n    api_key: ${env:MODELSYNC_TEST_ASTICA_KEY}\n"
            f"    base_url: http://127.0.0.1:{port}\n    timeout: 2\n    max_retries: 0\n"
            "models:\n  shapes:\n    classes:\n      circle: {samples: [data/circle]}\n"
            "      square: {samples: [data/square/missing.png]}\n",
        )
        r = run_cli(project, "plan")
        assert r.code == 1
        assert r.err.startswith("modelsync.yaml:") and "no such file: data/square/missing.png" in r.err, r.err
        assert connections() == 0  # nothing was sent


def test_an_unusable_store_path_is_one_line_after_the_spec_own_errors(project: Path):
    """Reading the embedded backend early must not turn its errors into internal errors, nor
    hide a source error behind them."""
    head = "version: 1\nproviders:\n  lab: {type: local, path: %s}\nmodels:\n  shapes:\n    classes:\n" % ("x" * 300)
    write_spec(project, head + "      circle: {samples: [data/circle]}\n      square: {samples: [data/square]}\n"
                              "    training: {auto: false}\n")
    r = run_cli(project, "plan")
    assert r.code == 1 and "internal error" not in r.err, r.err
    (line,) = [x for x in r.err.splitlines() if x.startswith("Error")]
    assert line.startswith("Error: refresh: list models 'lab': open ") and line.endswith("File name too long"), r.err
    write_spec(project, head + "      circle: {samples: [data/circle]}\n      square: {samples: [data/nowhere]}\n"
                              "    training: {auto: false}\n")
    r = run_cli(project, "plan")
    assert r.code == 1 and r.err.startswith("modelsync.yaml:8:"), r.err
    assert "no such file: data/nowhere" in r.err and "refresh" not in r.err, r.err


def test_the_embedded_backend_is_read_early_but_a_bad_spec_still_creates_nothing(project: Path):
    write_spec(project, "version: 1\nmodels:\n  shapes:\n    classes:\n      circle: {samples: [data/circle]}\n"
                        "      square: {samples: [data/nowhere]}\n")
    r = run_cli(project, "plan")
    assert r.code == 1 and "no such file: data/nowhere" in r.err, r.err
    assert not (project / ".modelsync" / "local").exists()
