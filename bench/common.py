"""Shared helpers of the benchmarks: timing children, medians, the machine, the serve subprocess.

Benchmarks are plain scripts, not tests: each prints its figures (medians over several
runs), the command line that produced them and the machine's core count.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK = BENCH_DIR / ".work"  # git-ignored: datasets, DVC's venv, serve data


def header(title: str) -> None:
    """Print what ran, where: every benchmark's output starts with this."""
    print(f"== {title}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()} ({_cpu_model()}), Python {platform.python_version()}, {platform.system()}")
    print()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def modelsync_cmd() -> list[str]:
    """The `modelsync` console script of the running interpreter's environment."""
    script = Path(sys.executable).parent / "modelsync"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from reconciler.cli import main; main()"]


@dataclass
class Run:
    seconds: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0  # user + system of the child and the descendants it waited for


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a measured command: as a user's shell has it. Bytecode caching is
    on (a sandbox may set PYTHONDONTWRITEBYTECODE, which would recompile every module of
    modelsync on every run and measure the compiler)."""
    out = dict(os.environ if env is None else env)
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    return out


def run_measured(
    cmd: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, check: bool = True
) -> Run:
    """Run ``cmd``; wall time and the child's own peak RSS (os.wait4 gives that child's rusage).

    For a command that forks workers the figure is the largest process (Linux's ru_maxrss
    semantics), which is the main process for modelsync.
    """
    env = child_env(env)
    out_path = WORK / f".out-{os.getpid()}"
    err_path = WORK / f".err-{os.getpid()}"
    WORK.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, rusage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    out_path.unlink(missing_ok=True)
    err_path.unlink(missing_ok=True)
    if check and proc.returncode not in (0, 2):
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{stdout[-2000:]}\n{stderr[-4000:]}")
    cpu = rusage.ru_utime + rusage.ru_stime
    return Run(elapsed, rusage.ru_maxrss / 1024.0, proc.returncode, stdout, stderr, cpu)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt_runs(values: Sequence[float], unit: str = "s", digits: int = 3) -> str:
    shown = ", ".join(f"{v:.{digits}f}" for v in values)
    return f"median {statistics.median(values):.{digits}f} {unit} (runs: {shown})"


def ensure_dataset(n: int, k: int, directory: Path, *extra: str) -> Path:
    """Generate the dataset with gen_dataset.py unless one of the same shape is already there."""
    marker = directory / ".gen.json"
    want = {"n": n, "k": k, "extra": list(extra)}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return directory
    if directory.exists():
        shutil.rmtree(directory)
    gen = [sys.executable, str(BENCH_DIR / "gen_dataset.py"), str(n), str(k), str(directory), *extra]
    subprocess.run(gen, check=True)
    marker.write_text(json.dumps(want))
    return directory


UNPACED = 1_000_000  # requests a minute: a spec's rate_limit that is never reached


def upload_dataset(n: int) -> Path:
    """N images in 2 classes for astica uploads to serve (bench/.work/latency-N), spec unpaced."""
    return ensure_dataset(
        n, 2, WORK / f"latency-{n}", "--provider", "astica",
        "--base-url", "http://127.0.0.1:1", "--rate-limit", str(UNPACED),
    )


def good_upload_times(log: list) -> list[float]:
    """When serve began each astica upload it answered 200, in order (from Serve.requests())."""
    return sorted(t for t, _, path, status in log if path == "/model/upload" and status == 200)


def prepare_applied(root: Path) -> None:
    """Apply the dataset's spec once (so a plan is a no-op), unless the plan is already empty."""
    ms = modelsync_cmd()
    check = run_measured([*ms, "plan", "--detailed-exitcode"], cwd=root)
    if check.returncode == 2:
        t0 = time.perf_counter()
        run_measured([*ms, "apply", "--auto-approve", "--parallelism", "10"], cwd=root)
        print(f"modelsync apply (once, embedded backend): {time.perf_counter() - t0:.1f} s")


def drop_modelsync_dir(directory: Path) -> None:
    shutil.rmtree(directory / ".modelsync", ignore_errors=True)
    (directory / "modelsync.lock").unlink(missing_ok=True)


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Serve:
    base_url: str
    process: subprocess.Popen
    data_dir: Path
    log_path: Path

    def requests(self) -> list[tuple[float, str, str, int]]:
        """The server's log: (monotonic time, method, path, status) per request."""
        import httpx

        return [tuple(e) for e in httpx.get(self.base_url + "/bench/log", timeout=30).json()]

    def reset(self) -> None:
        import httpx

        httpx.post(self.base_url + "/bench/reset", timeout=30)


@contextlib.contextmanager
def serve(
    data_dir: Path,
    *,
    key: str,
    rate_limit: int | None,
    total_rate_limit: int | None,
    latency: float = 0.0,
    owner: str | None = None,
    service_dir: Path | None = None,
) -> Iterator[Serve]:
    """The real serve app (bench/counting_serve.py: plus a request log) on a free loopback port."""
    import httpx

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, str(BENCH_DIR / "counting_serve.py"), "--port", str(port)]
    cmd += ["--data", str(service_dir or data_dir / "service"), "--key", key]
    if owner:
        cmd += ["--owner", owner]
    cmd += ["--rate-limit", str(rate_limit or 0), "--total-rate-limit", str(total_rate_limit or 0)]
    if latency:
        cmd += ["--latency", str(latency)]
    log_path = data_dir / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir, env=child_env())
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited ({proc.returncode}):\n{log_path.read_text(errors='replace')}")
            try:
                if httpx.get(base_url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("serve did not start within 30 s")
            time.sleep(0.05)
        yield Serve(base_url, proc, data_dir, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def astica_env(key: str) -> dict[str, str]:
    """The environment for a modelsync subprocess whose spec reads ${env:BENCH_API_KEY}."""
    return dict(os.environ, BENCH_API_KEY=key, NO_COLOR="1")


def provider_line(stdout: str) -> str:
    """apply's "<provider>: N requests, R retries, T throttled (HTTP 429)" line."""
    for line in stdout.splitlines():
        if " requests, " in line and " retries, " in line:
            return line.strip()
    return "(apply printed no request counts)"


def set_base_url(root: Path, url: str) -> None:
    """Point the generated spec's provider at ``url`` (serve gets a new port each run)."""
    import re

    spec = root / "modelsync.yaml"
    text = spec.read_text()
    text, n = re.subn(r"(?m)^(\s+base_url: ).*$", lambda m: m.group(1) + url, text)
    if n != 1:
        raise SystemExit(f"{spec}: expected one base_url line")
    spec.write_text(text)
