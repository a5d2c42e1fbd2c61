"""The specs of one refinement search shared out over processes.

Refining a layer's bounds is one branch and bound whose specs (each unstable neuron's two bound
directions) never interact: a spec's bound depends only on its own domains. So the specs can be
dealt out to separate processes, each running the same search on its share, and the results put
back in order. On a machine given to one instance (the VNN-COMP setting), that uses every core
where threads inside torch do not: the matrices of one domain batch are too small for threads to
pay (1.14x with two, measured on mnistfc 256x4).

Workers are spawned (not forked: a forked torch with live OpenMP threads can hang) when the pool
is made, so they import while the caller does other work. A share whose worker fails or does not
answer in time tightens nothing (its bounds come back as -inf), which is always sound.
"""

from __future__ import annotations

import math
import multiprocessing
import operator
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from verifier.bab.layered import Layered
from verifier.bab.search import BabSettings, branch_and_bound

#: Seconds a worker may overrun its share's deadline before its share is given up.
GRACE = 10.0


def _never(x) -> bool:
    """Refinement specs have no counterexamples to confirm (module level, so it pickles)."""
    return False


def _init_worker() -> None:
    torch.set_num_threads(1)


def _ready() -> bool:
    return True


def search_share(net: Layered, specs: list, x_lo, x_hi, lower: list, upper: list, seconds: float,
                 settings: BabSettings) -> tuple[list[float], dict, bool]:
    """One share of the specs: (lower bounds in its order, stats, exhausted)."""
    out = branch_and_bound(net, specs, x_lo, x_hi, lower, upper, 0.0, time.perf_counter() + seconds, _never,
                           settings=settings)
    return out.lower, out.stats, out.exhausted


def _packed(specs: list) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Specs as two compact tensors and their row counts: a spec's rows are often views of a
    whole weight matrix, which would be pickled whole for every spec."""
    rows = torch.cat([r for r, _ in specs]).contiguous()
    consts = torch.cat([c for _, c in specs]).contiguous()
    return rows, consts, [r.shape[0] for r, _ in specs]


def _search_packed(net: Layered, packed, x_lo, x_hi, lower: list, upper: list, seconds: float,
                   settings: BabSettings) -> tuple[list[float], dict, bool]:
    """search_share in a worker, from `_packed` specs."""
    rows, consts, counts = packed
    starts = [sum(counts[:i]) for i in range(len(counts))]
    specs = [(rows[s:s + n], consts[s:s + n]) for s, n in zip(starts, counts)]
    return search_share(net, specs, x_lo, x_hi, lower, upper, seconds, settings)


def merge(shares: list[tuple[list[float], dict, bool] | None], sizes: list[int]) -> tuple[list[float], dict, bool]:
    """Results of shares dealt round-robin (share i holds specs i, i + p, ...) back in spec
    order; a failed share (None) proves nothing: -inf for its specs, and not exhausted."""
    p, total = len(shares), sum(sizes)
    lower = [-math.inf] * total
    stats: dict = {}
    exhausted = True
    for i, share in enumerate(shares):
        if share is None:
            exhausted = False
            continue
        values, share_stats, done = share
        lower[i::p] = values
        exhausted = exhausted and done
        for key, value in share_stats.items():
            combine = max if key in ("bab_max_queue", "bab_memory_full") else operator.add
            stats[key] = combine(stats.get(key, 0), value)
    return lower, stats, exhausted


class SpecWorkers:
    """`processes` - 1 helper processes (none for 1) that take shares of a refinement search's
    specs while the calling process does its own share."""

    def __init__(self, processes: int) -> None:
        self.processes = max(1, int(processes))
        self._pool: ProcessPoolExecutor | None = None
        if self.processes > 1:
            self._pool = ProcessPoolExecutor(self.processes - 1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker)
            for _ in range(self.processes - 1):  # start the imports now, not at the first search
                self._pool.submit(_ready)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "SpecWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search(self, net: Layered, specs: list, x_lo, x_hi, lower: list, upper: list, deadline: float,
               settings: BabSettings) -> tuple[list[float], dict, bool]:
        """branch_and_bound over `specs` (tolerance 0, no counterexamples), shared out:
        (lower bounds in spec order, summed stats, whether every share exhausted its domains).
        Each process keeps its open domains within its share of settings.max_memory."""
        seconds = deadline - time.perf_counter()
        p = self.processes if self._pool is not None else 1
        p = min(p, len(specs))
        if p <= 1:
            return search_share(net, specs, x_lo, x_hi, lower, upper, seconds, settings)
        shared = BabSettings(**{**settings.__dict__, "max_memory": settings.max_memory // p})
        chunks = [specs[i::p] for i in range(p)]
        futures = []
        for chunk in chunks[1:]:
            try:
                futures.append(self._pool.submit(_search_packed, net, _packed(chunk), x_lo, x_hi, lower, upper,
                                                 seconds, shared))
            except RuntimeError:  # the pool is broken or shut down
                futures.append(None)
        results: list = [search_share(net, chunks[0], x_lo, x_hi, lower, upper, seconds, shared)]
        for future in futures:
            try:
                wait = max(deadline - time.perf_counter(), 0.0) + GRACE
                results.append(future.result(timeout=wait) if future is not None else None)
            except Exception:  # a lost share tightens nothing; the others still count
                results.append(None)
        return merge(results, [len(c) for c in chunks])
