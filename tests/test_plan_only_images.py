"""plan refuses a sample that is not an image before anything is sent (CLI, embedded backend)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.cli_helpers import copy_quickstart, local_samples, make_png, run_cli

NOT_AN_IMAGE = "not an image (PNG, JPEG, GIF, BMP or WebP)"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_quickstart(tmp_path / "quickstart")


def add_circle_sources(project: Path, *sources: str) -> dict[str, str]:
    """Declare ``sources`` after the circle glob; returns source -> its ``FILE:LINE:COL: path``."""
    spec = project / "modelsync.yaml"
    lines = spec.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "- data/circle/*.png" in line) + 1
    indent = lines[at - 1].index("-")
    lines[at:at] = [" " * indent + f"- {s}" for s in sources]
    spec.write_text("\n".join(lines) + "\n")
    return {
        s: f"modelsync.yaml:{at + k + 1}:{indent + 3}: models.shapes.classes.circle.samples[{k + 1}]"
        for k, s in enumerate(sources)
    }


def write_images_of_every_format(directory: Path) -> list[str]:
    """A JPEG, GIF, BMP and WebP (the PNGs are the quickstart's): the formats that must pass."""
    names = []
    for k, fmt in enumerate(["JPEG", "GIF", "BMP", "WEBP"]):
        name = f"extra-{k}.{fmt.lower()}"
        Image.new("RGB", (24, 24), (40 * k, 90, 200)).save(directory / name, format=fmt)
        names.append(name)
    return names


def test_a_sample_that_is_not_an_image_fails_the_plan_and_apply_changes_nothing(project: Path, tmp_path: Path):
    square = project / "data" / "square"
    accepted = write_images_of_every_format(square)
    (project / "data" / "circle" / "notes.txt").write_text("shopping list\n")
    (square / "fake.png").write_text("this is text, named .png\n")  # walked with the directory
    (square / "empty.png").write_bytes(b"")
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n")
    at = add_circle_sources(project, "data/circle/notes.txt", f"file://{outside}")
    lines = (project / "modelsync.yaml").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if "- path: data/square/" in line)
    square_at = f"modelsync.yaml:{row + 1}:{lines[row].index('path') + 1}: models.shapes.classes.square.samples[0]"
    expected = sorted(
        [
            f"{at['data/circle/notes.txt']}: data/circle/notes.txt: {NOT_AN_IMAGE}",
            f"{at[f'file://{outside}']}: {outside}: {NOT_AN_IMAGE}",
            f"{square_at}: data/square/empty.png: {NOT_AN_IMAGE}",
            f"{square_at}: data/square/fake.png: {NOT_AN_IMAGE}",
        ]
    )

    for command in (["plan"], ["plan", "--json"], ["plan"], ["apply", "--auto-approve"]):  # cold, then warm cache
        r = run_cli(project, *command)
        assert r.code == 1, (command, r.out, r.err)
        errors = sorted(line for line in r.err.splitlines() if "modelsync.yaml:" in line)
        assert errors == expected, r.err
        assert "Traceback" not in r.err and r.out == ""
    assert not (project / ".modelsync" / "local").exists()  # no model created, nothing sent

    for bad in (project / "data" / "circle" / "notes.txt", square / "fake.png", square / "empty.png", outside):
        bad.unlink()
    spec = project / "modelsync.yaml"
    kept = [line for line in spec.read_text().splitlines(True) if "notes.txt" not in line and "passwd" not in line]
    spec.write_text("".join(kept))
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    uploaded = {s for _, cls, s in local_samples(project) if cls == "square"}
    assert len(local_samples(project)) == 48 + len(accepted) and len(uploaded) == 24 + len(accepted)
    r = run_cli(project, "plan", "--detailed-exitcode")
    assert r.code == 0 and "hashing" not in r.err, r.out + r.err  # warm: nothing read again


def test_a_url_that_serves_no_image_fails_the_plan(project: Path, tmp_path: Path, static_files):
    web = tmp_path / "web"
    web.mkdir()
    (web / "page.png").write_text("<html>not found, but 200</html>")
    make_png(web / "ok.png", "circle", seed=7)
    base = static_files(web)
    at = add_circle_sources(project, f"{base}/page.png", f"{base}/ok.png")
    r = run_cli(project, "plan")
    assert r.code == 1, r.out + r.err
    assert r.err.strip().splitlines()[-1] == f"{at[f'{base}/page.png']}: {base}/page.png: {NOT_AN_IMAGE}", r.err
    assert f"{base}/ok.png" not in r.err
