"""Running the real CLI from tests: in-process for speed, or as a subprocess when a test
must kill it or run two at once."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "examples" / "quickstart"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def run_cli(cwd: Path, *args: str) -> Result:
    """``modelsync -C cwd ARGS`` in this process, with its exit code and both streams."""
    from reconciler.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["-C", str(cwd), *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def cli_command(cwd: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "reconciler.cli", "-C", str(cwd), *args]


def spawn_cli(cwd: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.Popen(
        cli_command(cwd, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs
    )


@pytest.fixture
def applied(tmp_path: Path) -> Path:
    """A copy of the quickstart, applied once on the embedded backend (a module may define its own)."""
    project = copy_quickstart(tmp_path / "quickstart")
    r = run_cli(project, "apply", "--auto-approve")
    assert r.code == 0, r.err
    return project


def copy_quickstart(dest: Path) -> Path:
    shutil.copytree(QUICKSTART, dest, ignore=shutil.ignore_patterns(".modelsync", "modelsync.lock", "__pycache__"))
    return dest


def make_png(path: Path, kind: str, seed: int, size: int = 48) -> Path:
    """A small real PNG: a dark circle or square on a light noisy background."""
    rng = random.Random(seed)
    bg = tuple(rng.randint(170, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    side = rng.randint(size // 2, size - 8)
    x0, y0 = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
    colour = tuple(rng.randint(0, 110) for _ in range(3))
    (draw.ellipse if kind == "circle" else draw.rectangle)((x0, y0, x0 + side, y0 + side), fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_spec(root: Path, text: str) -> Path:
    path = root / "modelsync.yaml"
    path.write_text(text)
    return path


def local_samples(project: Path, title: str = "Shapes") -> list[tuple[str, str, str]]:
    """(uid, class, digest) of every sample of a model in the embedded backend, read directly."""
    from reconciler.local.service import LocalService

    service = LocalService(project / ".modelsync" / "local")
    try:
        model = next(m for m in service.list_models("local") if m.title == title)
        detail = service.get_model("local", model.id)
        return sorted((s.uid, c.title, s.digest) for c in detail.classes for s in c.samples)
    finally:
        service.close()
