"""Progress of a batch run on stderr: a live bar on a terminal, plain log lines everywhere else.

Why two forms: a bar redraws one line in place, which only a terminal shows; in a cluster job's
log file or a pipe it would be either nothing or thousands of carriage returns. There a plain
line is printed at a steady interval (a timer thread, so that it also appears while every
worker is stuck on a long sample), and once at the end:

    [12:03:04] 120/500 done: robust 100, adversarial 15, unknown 5; elapsed 3m02s, ETA 9m40s

The interval is `interval` seconds, else the environment variable VERIFY_PROGRESS_INTERVAL,
else 30.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from verifier.errors import InputError

DEFAULT_INTERVAL = 30.0
ENV_INTERVAL = "VERIFY_PROGRESS_INTERVAL"
VERDICTS = ("robust", "adversarial", "unknown")


def progress_interval(value: float | None = None) -> float:
    """Seconds between two log lines: `value`, else $VERIFY_PROGRESS_INTERVAL, else 30."""
    source = "progress_interval"
    if value is None:
        value, source = os.environ.get(ENV_INTERVAL), ENV_INTERVAL
        if value is None or value.strip() == "":
            return DEFAULT_INTERVAL
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{source} must be a number of seconds, got {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise InputError(f"{source} must be a positive number of seconds, got {value!r}")
    return seconds


def duration(seconds: float) -> str:
    """12s, 3m02s, 1h04m: short and fixed-order, for a log line."""
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class BatchProgress:
    """Counts of a run (those stored before it included) shown on stderr as they change.

    `enabled`: True forces the bar, False shows nothing, None picks the bar on a terminal and
    log lines otherwise. `already` lists the verdicts of the samples of the selection that are
    final before the run starts; `total` is the size of the selection."""

    def __init__(self, total: int, already: list[str], enabled: bool | None, interval: float | None = None,
                 stream: TextIO | None = None) -> None:
        self.stream = stream
        self.counts = dict.fromkeys(VERDICTS, 0)
        for verdict in already:
            self.counts[verdict] += 1
        self.total, self.already, self.new = total, len(already), 0
        on_terminal = bool(getattr(self._out, "isatty", lambda: False)())
        self.mode = "bar" if enabled or (enabled is None and on_terminal) else "log" if enabled is None else "off"
        self.interval = progress_interval(interval) if self.mode == "log" else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self._began = time.monotonic()

    @property
    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr  # read late: tests swap sys.stderr

    def __enter__(self) -> "BatchProgress":
        self._began = time.monotonic()
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=Console(file=self._out))
            self._bar.start()
            self._task = self._bar.add_task(self._text(), total=self.total, completed=self.already)
        elif self.mode == "log":
            self._thread = threading.Thread(target=self._tick, name="batch-progress", daemon=True)
            self._thread.start()
        return self

    def _text(self) -> str:
        return "  ".join(f"{v} {self.counts[v]}" for v in VERDICTS)

    def advance(self, row: dict) -> None:
        """One sample finished (its row, as committed)."""
        with self._lock:
            self.counts[row["verdict"]] += 1
            self.new += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=self._text())

    def line(self) -> str:
        """The log line for now: done / total, counts, elapsed and the ETA from this run's rate."""
        with self._lock:
            counts, new = dict(self.counts), self.new
        elapsed = time.monotonic() - self._began
        done = self.already + new
        left = max(0, self.total - done)
        eta = duration(elapsed / new * left) if new else ("0s" if not left else "unknown")
        return (f"[{time.strftime('%H:%M:%S')}] {done}/{self.total} done: "
                + ", ".join(f"{v} {counts[v]}" for v in VERDICTS)
                + f"; elapsed {duration(elapsed)}, ETA {eta}")

    def _print(self) -> None:
        try:
            print(self.line(), file=self._out, flush=True)
        except (OSError, ValueError):  # a closed log must not stop the run
            pass

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self._print()

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._print()  # the last line: what the run ended with
