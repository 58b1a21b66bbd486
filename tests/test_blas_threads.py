"""OpenBLAS runs one thread in every modelsync process (the CLI, `serve`, the tests), unless
the user says otherwise: the reconciler package sets it before numpy is first imported."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")


def blas_threads() -> int | None:
    """The threads of the OpenBLAS this process loaded (numpy's wheels bundle it), or None."""
    with open("/proc/self/maps") as maps:
        libs = sorted({line.split()[-1] for line in maps if "openblas" in line})
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(lib, name):
                return int(getattr(lib, name)())
    return None


def threads_after(imports: str, **env: str) -> int:
    """A fresh interpreter without the variables (plus ``env``): run ``imports``, then numpy's."""
    code = f"{imports}\nimport numpy\nfrom tests.test_blas_threads import blas_threads\nprint(blas_threads())"
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "None":
        pytest.skip("numpy is not linked with OpenBLAS here")
    return int(out.stdout)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS runs one thread anyway on one core")
def test_numpy_loaded_after_any_modelsync_entry_runs_one_blas_thread():
    assert threads_after("pass") >= 2  # the probe sees them: numpy alone takes every core
    assert threads_after("import reconciler.cli") == 1  # the `modelsync` console script
    assert threads_after("import reconciler.local.serve") == 1  # `python -m reconciler.local.serve`
    assert threads_after("import reconciler.local.trainer") == 1


def test_the_users_own_setting_wins():
    assert threads_after("import reconciler.cli", OPENBLAS_NUM_THREADS="2") == 2


def test_this_test_process_was_capped_before_numpy_loaded():
    import numpy  # noqa: F401  - loaded in any case by now

    threads = blas_threads()
    if threads is None:
        pytest.skip("numpy is not linked with OpenBLAS here")
    assert threads == int(os.environ["OPENBLAS_NUM_THREADS"])
