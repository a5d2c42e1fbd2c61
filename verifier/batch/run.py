"""`certify_dataset`: verify a test set at one eps, every finished sample committed at once.

Flow: data and settings -> the results store (refuses other settings) -> the samples not yet
in it -> an executor (serial, process pool, Ray) -> each result committed as it arrives, with
a live progress line -> the report (summary.json, results.csv, report.html). Rerunning the same
call skips what is stored; an interrupt (Ctrl-C, or a kill between commits) loses at most the
samples in flight, and Ctrl-C still writes the report of what finished.
"""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures.process import BrokenProcessPool
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from verifier.api import _options, load
from verifier.batch.dataset import Dataset, as_dataset, load_dataset
from verifier.batch.executors import check_executor, default_workers, run_tasks
from verifier.batch.report import summarise, write_report
from verifier.batch.store import ResultStore
from verifier.batch.tasks import Job
from verifier.distortion.norms import check_norm
from verifier.errors import InputError
from verifier.network.graph import Network
from verifier.options import VerifyOptions

STORE_VERSION = 1


@dataclass
class BatchResult:
    summary: dict
    rows: list[dict] = field(repr=False)
    report: Path | None
    interrupted: bool = False


def certify_dataset(net: Network | str | Path | bytes, images=None, labels=None, eps: float = 0.1,
                    report: str | Path | None = None, *, data: str | Path | None = None, start: int = 0,
                    limit: int | None = None, timeout: float | None = None, workers: int | None = None,
                    executor: str = "process", address: str | None = None, distortion: str | None = None,
                    eps_max: float | None = None, options: VerifyOptions | None = None,
                    progress: bool | None = None, solver: str | None = None) -> BatchResult:
    """Verify samples start .. start+limit of a test set at L-infinity radius eps.

    The set is `images`/`labels` (arrays; uint8 is scaled to [0, 1]), else `data` (an .npz with
    images and labels, or a folder of .npy files with labels.npy), else the embedded MNIST
    slice. `report` is the folder of the results store and the report; rerunning with the same
    folder resumes. `distortion` (linf, l1, l2, l0) also computes each sample's minimum
    distortion (within `eps_max` if given). `executor`: "process" (a pool of `workers`
    processes, default one per core), "ray" (a Ray cluster at `address`, or a local one),
    "serial" (this process). A torch module is read for inputs shaped like one of `images`.
    `solver` (the MIP solver, e.g. "cbc") overrides options.solver and, like every option, is
    part of the settings a results folder is kept for."""
    net = load(net, None if images is None else np.shape(images)[1:])
    if net.onnx_bytes is None:
        raise InputError("batch runs need the network's ONNX bytes (load it from an ONNX file)")
    dataset = as_dataset(images, labels) if images is not None else load_dataset(data, net.input_shape)
    dataset.check_fits(net.input_shape)
    eps = _number("eps", eps, minimum=0.0)
    if distortion is not None:
        check_norm(distortion)
    if eps_max is not None:
        eps_max = _number("eps_max", eps_max, minimum=0.0)
    check_executor(executor)  # before the store is created
    opts = replace(_options(options, timeout, solver), threads=1)
    workers = default_workers(opts.device) if workers is None else int(workers)
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    indices = _selection(len(dataset), start, limit)
    job = Job(eps, opts, distortion, eps_max)
    settings = _settings(net, dataset, job)

    store = ResultStore(report if report is not None else _scratch(), settings)
    stopped_by = None
    wall = time.perf_counter()
    try:
        todo = sorted(set(indices) - store.done())
        tasks = [(i, dataset.images[i], int(dataset.labels[i])) for i in todo]
        results = run_tasks(executor, net.onnx_bytes, job, tasks, workers, address)
        with _Progress(len(indices), len(indices) - len(todo), store.rows(indices), progress) as bar:
            for row, arrays in results:
                store.add(row, arrays)
                bar.advance(row)
    except KeyboardInterrupt:
        stopped_by = "interrupted by the user"
    except BrokenProcessPool as e:  # a worker killed (e.g. out of memory) or unable to start
        stopped_by = f"a worker process died: {e}"
    interrupted = stopped_by is not None
    wall = time.perf_counter() - wall
    rows = store.rows(indices)
    run_info = {"workers": workers, "executor": executor, "wall_time": round(wall, 3),
                "requested": len(indices), "interrupted": interrupted, "stopped_by": stopped_by}
    summary = summarise(rows, settings, dataset, run_info)
    folder = None
    if report is not None:
        folder = write_report(Path(report), summary, rows, dataset, net.input_shape)
    store.close()
    return BatchResult(summary, rows, folder, interrupted)


def _number(name: str, value, minimum: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(value) or value < minimum:
        raise InputError(f"{name} must be a finite number >= {minimum:g}, got {value}")
    return value


def _selection(size: int, start: int, limit: int | None) -> list[int]:
    if not 0 <= int(start) < size:
        raise InputError(f"start must be in 0..{size - 1} (the data has {size} samples), got {start}")
    if limit is not None and int(limit) < 1:
        raise InputError(f"limit must be >= 1, got {limit}")
    end = size if limit is None else min(size, int(start) + int(limit))
    return list(range(int(start), end))


def _settings(net: Network, dataset: Dataset, job: Job) -> dict:
    """Everything that changes a sample's result; a store only takes runs with equal settings."""
    options = {k: v for k, v in asdict(job.options).items() if k != "threads"}
    return {"store_version": STORE_VERSION, "verifier_version": _version(),
            "model_sha256": hashlib.sha256(net.onnx_bytes).hexdigest(), "model": net.name, "data_sha256": dataset.fingerprint, "data": dataset.source, "eps": job.eps,
            "distortion": job.distortion, "eps_max": job.eps_max,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("relu-verifier")
    except PackageNotFoundError:
        return "unknown"


def _scratch() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="verify-batch-")


class _Progress:
    """A live line on stderr: done / total, robust / adversarial / unknown so far, ETA."""

    def __init__(self, total: int, already: int, rows: list[dict], enabled: bool | None) -> None:
        self.counts = {"robust": 0, "adversarial": 0, "unknown": 0}
        for r in rows:
            self.counts[r["verdict"]] += 1
        self.total, self.already = total, already
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.progress = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True))
            self.progress.start()
            self.task = self.progress.add_task(self._text(), total=self.total, completed=self.already)
        return self

    def _text(self) -> str:
        return f"robust {self.counts['robust']}  adversarial {self.counts['adversarial']}  unknown {self.counts['unknown']}"

    def advance(self, row: dict) -> None:
        self.counts[row["verdict"]] += 1
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=self._text())

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
