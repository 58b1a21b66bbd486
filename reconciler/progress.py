"""Progress for long work: a rich bar on a TTY, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from reconciler.apply import Reporter

PLAIN_EVERY_SECONDS = 5.0


class RichReporter(Reporter):
    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from reconciler.render import console

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console(stderr=True),
            transient=True,
        )
        self._task: Any = None
        self._lock = threading.Lock()
        self._progress.start()

    def phase(self, name: str, total: int) -> None:
        with self._lock:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(name.replace("_", " "), total=total)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            if self._task is not None:
                self._progress.advance(self._task, n)

    def message(self, text: str) -> None:
        self._progress.console.print(f"[dim]{text}[/dim]")

    def done(self) -> None:
        self._progress.stop()


class PlainReporter(Reporter):
    """One line per phase and one every few seconds: readable in CI logs."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._name = ""
        self._total = 0
        self._count = 0
        self._last = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def phase(self, name: str, total: int) -> None:
        with self._lock:
            self._name, self._total, self._count = name.replace("_", " "), total, 0
            self._last = time.monotonic()
        self._print(f"{self._name}: {total} to do")

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self._count += n
            now = time.monotonic()
            if now - self._last < PLAIN_EVERY_SECONDS:
                return
            self._last = now
            count, total, name = self._count, self._total, self._name
        self._print(f"{name}: {count}/{total}")

    def message(self, text: str) -> None:
        self._print(text)


def make_reporter() -> Reporter:
    return RichReporter() if sys.stderr.isatty() else PlainReporter()
