"""`certify_dataset`: verify a test set at one eps or several, every finished sample committed at once.

Flow: data and settings -> the results store (refuses other settings) -> the samples not yet
in it -> an executor (serial, process pool, Ray) -> each result committed as it arrives, with
a live progress line -> the report (summary.json, results.csv, report.html). Rerunning the same
call skips what is stored; an interrupt (Ctrl-C, or a kill between commits) loses at most the
samples in flight, and Ctrl-C still writes the report of what finished.

At several radii (`eps` a list) each sample runs `verify_radii` (one timeout for all radii,
answers implying others) and is stored as one row per (sample, eps), committed together; the
summary gets counts per radius and the eps curve (report.py).

`rerun_unknown` takes only the stored `unknown` rows again (with a new timeout: rerun.py);
`save_examples` writes each sample's counterexamples as `.npz` files after the report
(export.py), which on a finished folder is all such a call does.
"""

from __future__ import annotations

import hashlib
from concurrent.futures.process import BrokenProcessPool
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from verifier.api import _options, load
from verifier.batch.dataset import Dataset, as_dataset, load_dataset
from verifier.batch.executors import check_executor, default_workers, run_tasks
from verifier.batch.export import export_rows, prepare_folder
from verifier.batch.progress import BatchProgress, progress_interval as check_interval
from verifier.batch.report import summarise, write_report
from verifier.batch.rerun import RERUN_MAY_DIFFER, check_rerun_folder, rerun_rows, unknown_rows
from verifier.batch.store import ResultStore
from verifier.batch.tasks import Job, rows_of
from verifier.distortion.norms import check_norm
from verifier.errors import InputError
from verifier.network.graph import Network
from verifier.options import VerifyOptions
from verifier.version import package_version
from verifier.radii import eps_list

STORE_VERSION = 1


@dataclass
class BatchResult:
    summary: dict
    rows: list[dict] = field(repr=False)
    report: Path | None
    interrupted: bool = False
    examples: list[Path] = field(default_factory=list, repr=False)  # the files of save_examples


def certify_dataset(net: Network | str | Path | bytes, images=None, labels=None, eps: float | list[float] = 0.1,
                    report: str | Path | None = None, *, data: str | Path | None = None, start: int = 0,
                    limit: int | None = None, timeout: float | None = None, workers: int | None = None,
                    executor: str = "process", address: str | None = None, distortion: str | None = None,
                    eps_max: float | None = None, options: VerifyOptions | None = None,
                    progress: bool | None = None, solver: str | None = None,
                    save_examples: str | Path | None = None, rerun_unknown: bool = False,
                    progress_interval: float | None = None) -> BatchResult:
    """Verify samples start .. start+limit of a test set at L-infinity radius eps, or at each
    radius of a list (or text "0.01,0.02"): one row per (sample, eps), the timeout per sample
    covering all its radii, and the summary's `per_eps` counts and `eps_curve`.

    The set is `images`/`labels` (arrays; uint8 is scaled to [0, 1]), else `data` (an .npz with
    images and labels, or a folder of .npy files with labels.npy), else the embedded MNIST
    slice. `report` is the folder of the results store and the report; rerunning with the same
    folder resumes. `distortion` (linf, l1, l2, l0) also computes each sample's minimum
    distortion (within `eps_max` if given). `executor`: "process" (a pool of `workers`
    processes, default one per core), "ray" (a Ray cluster at `address`, or a local one),
    "serial" (this process). A torch module is read for inputs shaped like one of `images`.
    `solver` (the MIP solver, e.g. "cbc") overrides options.solver and, like every option, is
    part of the settings a results folder is kept for.

    `rerun_unknown`: run again only the samples of the selection stored as unknown in the
    existing folder `report`, usually with a longer `timeout` (the one setting allowed to differ
    from the folder's); each replaces its row, the rerun is recorded in the folder. Samples not
    yet stored are not run by a rerun. `save_examples`: a folder to write one .npz per sample
    with a counterexample or distortion example (export.py), for the whole selection, also
    what earlier runs stored. `progress`: True a live bar, False nothing, None a bar on a
    terminal and else a log line every `progress_interval` seconds (default
    $VERIFY_PROGRESS_INTERVAL or 30) on stderr."""
    net = load(net, None if images is None else np.shape(images)[1:])
    if net.onnx_bytes is None:
        raise InputError("batch runs need the network's ONNX bytes (load it from an ONNX file)")
    dataset = as_dataset(images, labels) if images is not None else load_dataset(data, net.input_shape)
    dataset.check_fits(net.input_shape)
    radii = eps_list(eps, "eps")
    eps = radii[0] if len(radii) == 1 else tuple(radii)  # one radius: everything as before
    if distortion is not None:
        check_norm(distortion)
    if eps_max is not None:
        eps_max = _number("eps_max", eps_max, minimum=0.0)
    check_executor(executor)  # before the store is created
    if rerun_unknown:
        check_rerun_folder(report)
    if progress is None:
        check_interval(progress_interval)  # a bad interval fails before any work
    export_to = None if save_examples is None else prepare_folder(save_examples)
    opts = replace(_options(options, timeout, solver), threads=1)
    workers = default_workers(opts.device) if workers is None else int(workers)
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    indices = _selection(len(dataset), start, limit)
    job = Job(eps, opts, distortion, eps_max)
    settings = _settings(net, dataset, job)

    store = ResultStore(report if report is not None else _scratch(), settings, net.input_shape,
                        RERUN_MAY_DIFFER if rerun_unknown else frozenset())
    stopped_by, rerun, finished = None, None, 0
    wall = time.perf_counter()
    try:
        stored = store.rows(indices)
        several = eps if isinstance(eps, tuple) else None
        if rerun_unknown:  # (index, eps) -> row; a rerun sample's decided rows stay as they are
            previous = unknown_rows(stored)
            todo, total = sorted({i for i, _ in previous}), len(stored)
            rerun = store.begin_rerun(opts.timeout, todo)
            already = [r["verdict"] for r in stored if (r["index"], r["eps"]) not in previous]
        else:
            todo, total = sorted(set(indices) - store.done()), len(indices) * len(radii)
            waiting = set(todo)
            already = [r["verdict"] for r in stored if r["index"] not in waiting]
        tasks = [(i, dataset.images[i], int(dataset.labels[i])) for i in todo]
        results = run_tasks(executor, net.onnx_bytes, job, tasks, workers, address) if tasks else []
        with BatchProgress(total, already, progress, progress_interval) as bar:
            for task_row, task_arrays in results:
                sample = rows_of(task_row, task_arrays, several)
                if rerun is not None:
                    sample = rerun_rows(previous, sample, eps)
                store.add_many(sample)
                finished += 1
                for row, _ in sample:
                    bar.advance(row)
    except KeyboardInterrupt:
        stopped_by = "interrupted by the user"
    except BrokenProcessPool as e:  # a worker killed (e.g. out of memory) or unable to start
        stopped_by = f"a worker process died: {e}"
    interrupted = stopped_by is not None
    if rerun is not None:
        store.end_rerun(rerun, finished, interrupted)
    wall = time.perf_counter() - wall
    rows = store.rows(indices)
    run_info = {"workers": workers, "executor": executor, "wall_time": round(wall, 3),
                "requested": len(indices), "interrupted": interrupted, "stopped_by": stopped_by,
                "reruns": [{k: v for k, v in r.items() if k != "indices"} | {"samples": len(r["indices"])}
                           for r in store.reruns]}
    if rerun_unknown:  # the folder's timeout; the reruns' own are in run_info
        settings = {**settings, "options": {**settings["options"], "timeout": store.settings["options"]["timeout"]}}
    summary = summarise(rows, settings, dataset, run_info)
    folder = None
    if report is not None:
        folder = write_report(Path(report), summary, rows, dataset, net.input_shape)
    store.close()
    examples = [] if export_to is None else export_rows(export_to, rows, dataset.images, net.input_shape,
                                                        None if isinstance(eps, tuple) else eps)
    return BatchResult(summary, rows, folder, interrupted, examples)


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
    return {"store_version": STORE_VERSION, "verifier_version": package_version(),
            "model_sha256": hashlib.sha256(net.onnx_bytes).hexdigest(), "model": net.name, "data_sha256": dataset.fingerprint, "data": dataset.source,
            "eps": list(job.eps) if isinstance(job.eps, tuple) else job.eps,
            "distortion": job.distortion, "eps_max": job.eps_max,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}


def _scratch() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="verify-batch-")
