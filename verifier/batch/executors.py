"""Where the samples run: in this process, in a local process pool, or on a Ray cluster.

Each executor takes the same tasks (index, image, label) and yields (row, arrays) as samples
finish, in completion order, so the caller can commit every result at once. One solver thread
per worker: HiGHS and torch are set to one thread by the verification options, and a worker
is one core. Ray is the engine for clusters; nothing here schedules beyond handing it tasks.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Iterable, Iterator

import numpy as np

from verifier.batch.tasks import Job, certify_sample
from verifier.errors import InputError, one_line

EXECUTORS = ("process", "ray", "serial")
Task = tuple[int, np.ndarray, int]


def default_workers(device: str | None = "cpu") -> int:
    """One worker per core on the CPU; one on a GPU, which a single process's batched bounds
    keep busy (each more would hold its own CUDA context and memory)."""
    if str(device or "cpu").startswith("cuda"):
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def check_executor(executor: str) -> str:
    if executor not in EXECUTORS:
        raise InputError(f"executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    return executor


def run_tasks(executor: str, onnx_bytes: bytes, job: Job, tasks: list[Task], workers: int,
              address: str | None = None) -> Iterator[tuple[dict, dict]]:
    if check_executor(executor) == "serial":
        return (certify_sample(onnx_bytes, job, *t) for t in tasks)
    if executor == "process":
        return _pool(onnx_bytes, job, tasks, workers)
    return _ray(onnx_bytes, job, tasks, workers, address)


_WORKER_MODEL: list[bytes] = []  # in a pool worker: the ONNX bytes it was started with


def _init_pool_worker(onnx_bytes: bytes, parent_pid: int) -> None:
    from verifier.batch.tasks import network
    from verifier.lifetime import die_with_parent
    from verifier.threads import worker_threads

    die_with_parent(parent_pid)  # a kill -9 of the run must not leave its workers running

    worker_threads()
    _WORKER_MODEL.append(onnx_bytes)
    network(onnx_bytes)  # load once, before the first task


def _sample_in_worker(job: Job, task: Task):
    return certify_sample(_WORKER_MODEL[0], job, *task)


def _pool(onnx_bytes: bytes, job: Job, tasks: Iterable[Task], workers: int):
    """At most 2 tasks per worker are queued at a time, so an interrupt leaves little in flight
    and the images are not all copied up front."""
    tasks = iter(tasks)
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_pool_worker,
                               initargs=(onnx_bytes, os.getpid()))
    pending = set()
    try:
        while True:
            while len(pending) < 2 * workers:
                task = next(tasks, None)
                if task is None:
                    break
                pending.add(pool.submit(_sample_in_worker, job, task))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _ray(onnx_bytes: bytes, job: Job, tasks: Iterable[Task], workers: int, address: str | None):
    try:
        import ray
    except ImportError:
        raise InputError("the ray executor needs Ray: pip install 'relu-verifier[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": workers}
        try:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise InputError(f"cannot start or reach the Ray cluster{f' at {address}' if address else ''}: {e}") from None
    remote = ray.remote(num_cpus=1)(_ray_sample)
    model = ray.put(onnx_bytes)
    tasks = iter(tasks)
    in_flight = 2 * (int(ray.cluster_resources().get("CPU", workers)) if address else workers)
    pending, owner = [], {}
    try:
        while True:
            while len(pending) < in_flight:
                task = next(tasks, None)
                if task is None:
                    break
                ref = remote.remote(model, job, *task)
                pending.append(ref)
                owner[ref] = task
            if not pending:
                break
            done, pending = ray.wait(pending, num_returns=1)
            index, _, label = owner.pop(done[0])
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayError as e:  # a crashed worker or node: that sample is unknown
                yield ({"index": index, "label": label, "verdict": "unknown", "solver_status": "error",
                        "decided_by": f"error: {one_line(e)}"}, {})
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()


def _ray_sample(onnx_bytes: bytes, job: Job, index: int, image: np.ndarray, label: int):
    from verifier.threads import worker_threads

    worker_threads()
    return certify_sample(onnx_bytes, job, index, image, label)
