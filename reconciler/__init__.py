"""modelsync's reconciler: everything that acts (resolve, diff, plan, apply, providers, CLI),
and under ``reconciler.local`` the embedded training service.

Every entry point imports this package first (the ``modelsync`` console script,
``python -m reconciler.local.serve``, the tests), so the BLAS thread count is set here,
before anything imports numpy: OpenBLAS reads it once, when it loads. One thread: the
trainer's matrices are small, and on a 2-core machine shared with `serve`, uploads or a
second test worker, OpenBLAS's spinning threads fight the rest for the cores (measured in
bench/bench_train.py). A value the user sets wins.

``import httpx`` also imports httpx's own command-line client (click, pygments, rich's
progress, syntax and table modules) whenever those happen to be installed, as they are
here: ~25 ms of every command's start (measured), for a CLI modelsync never runs. With
the module marked absent, httpx skips it and defines a stub instead (upstream made that
import lazy: pydantic/httpx2#947).
"""

import os as _os
import sys as _sys

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
del _var
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
