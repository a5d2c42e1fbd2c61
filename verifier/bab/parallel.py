"""One branch and bound shared out over processes: by specs, or by domains.

The specs of a search never interact: a spec's bound depends only on its own domains. So they
can be dealt out to separate processes, each running the same search on its share, and the
results put back in order: a refinement search's specs (each unstable neuron's two bound
directions), or the final search's disjuncts. Nor do a spec's domains interact once split: a
search with fewer specs than processes (a property left with one open disjunct) runs here
until every process has a round's worth of open domains, deals them out by bound, and each
process goes on with its deal. On a machine given to one instance (the VNN-COMP setting) that
uses every core where threads inside torch do not: the matrices of one domain batch are too
small for threads to pay (measured on mnistfc 256x4 and a CIFAR ResNet, see
benchmarks/RESULTS.md, "Why the defaults are what they are").

Helpers are spawned (not forked: a forked torch with live OpenMP threads can hang) when the pool
is made, so they import while the caller does other work. A helper stops at the first candidate
counterexample it meets and hands it back; only the caller's own check (onnxruntime) makes it a
counterexample. A share whose helper fails, does not answer in time, or hands back a candidate
the check rejects proves nothing (its bounds are -inf), which is always sound.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from verifier.bab.search import BabOutcome, BabSettings, Domain, add_stats, branch_and_bound, least_bounds
from verifier.lifetime import die_with_parent
from verifier.threads import worker_threads

if TYPE_CHECKING:
    from verifier.bab.graph_problem import GraphTarget
    from verifier.bab.input_split import InputSplitOutcome
    from verifier.bab.layered import Layered

#: Seconds a helper may overrun its share's deadline before its share is given up. Helpers
#: keep the deadline as this process does (deadline.py), so their results arrive in time; a
#: longer wait would only stretch the run past its time limit.
GRACE = 1.0


def _candidate(x) -> bool:
    """In a helper: stop at any candidate, for the caller to check."""
    return True


def _init_worker(parent_pid: int) -> None:
    worker_threads()
    die_with_parent(parent_pid)


def _ready() -> bool:
    return True


def _packed(specs: list) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Specs as two compact tensors and their row counts: a spec's rows are often views of a
    whole weight matrix, which would be pickled whole for every spec."""
    rows = torch.cat([r for r, _ in specs]).contiguous()
    consts = torch.cat([c for _, c in specs]).contiguous()
    return rows, consts, [r.shape[0] for r, _ in specs]


def _search_payload(payload: bytes) -> BabOutcome:
    """One share's search in a helper, from `_job`'s bytes."""
    return _search_packed(*pickle.loads(payload))


def _job(*args) -> bytes:
    """A share's arguments pickled here, before submitting, by value. The pool would pickle them
    later in its feeder thread, and torch's pickling for processes moves a tensor's storage to
    shared memory in place while this process may still be reading it in its own share."""
    return pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)


def _search_packed(net: "Layered | GraphTarget", packed, x_lo, x_hi, lower: list, upper: list, tolerance: float,
                   wall_deadline: float, settings: BabSettings, start: list[Domain] | None = None) -> BabOutcome:
    """One share's search, from `_packed` specs (and `start` domains, if given), until
    `wall_deadline` (time.time(): the one clock processes share; a helper still importing
    starts late but ends on time)."""
    rows, consts, counts = packed
    starts = [sum(counts[:i]) for i in range(len(counts))]
    specs = [(rows[s:s + n], consts[s:s + n]) for s, n in zip(starts, counts)]
    deadline = time.perf_counter() + (wall_deadline - time.time())
    return branch_and_bound(net, specs, x_lo, x_hi, lower, upper, tolerance, deadline, _candidate, settings=settings,
                            start=start)


def _input_payload(payload: bytes):
    """One share of an input search in a helper, from `_job`'s bytes: (net, device, rows,
    consts, owner, count, x_lo, x_hi, lower, tolerance, wall deadline, settings, start boxes)."""
    from verifier.bab.input_split import Specs, input_branch_and_bound
    from verifier.bounds.graph import compiled
    from verifier.bounds.walker import EXACT

    net, device, rows, consts, owner, count, x_lo, x_hi, lower, tolerance, wall_deadline, settings, start = \
        pickle.loads(payload)
    deadline = time.perf_counter() + (wall_deadline - time.time())
    return input_branch_and_bound(compiled(net, device, EXACT), Specs(rows, consts, owner, count), x_lo, x_hi, lower,
                                  tolerance, deadline, _candidate, settings, start=start)


def merge_boxes(first, shares: list, deals: list, check: Callable) -> "InputSplitOutcome":
    """An input search that handed off its open boxes (`first`: its `lower` covers the boxes
    it closed) and the searches of their deals as one: a spec's bound is the least over all of
    them; share 0 ran here with `check` itself, another share's point counts only if `check`
    confirms it. A share lost (None) or stopped by a point the check rejects contributes the
    bounds its boxes were dealt with, and proves nothing more. Not proved with a share out of
    time: "timeout"."""
    from verifier.bab.input_split import InputSplitOutcome

    lower, stats, proved = np.array(first.lower, dtype=float), dict(first.stats), True
    ran_out = False
    for i, (share, deal) in enumerate(zip(shares, deals)):
        if share is not None:
            add_stats(stats, share.stats)
            if share.status == "counterexample" and (i == 0 or check(share.x)):
                return InputSplitOutcome("counterexample", np.full(lower.shape, -math.inf), stats, x=share.x)
        if share is None or share.status == "counterexample":
            proved = False
            if len(deal[2]):
                lower = np.minimum(lower, deal[2].min(dim=0).values.numpy())
            continue
        lower = np.minimum(lower, share.lower)
        proved = proved and share.status == "proved"
        ran_out = ran_out or share.status == "timeout"
    return InputSplitOutcome("proved" if proved else "timeout" if ran_out else "unknown", lower, stats)


def _share_bounds(bounds: list, i: int, p: int, n_specs: int) -> list:
    """Share i's root bounds: per-spec rows (S, n_k) are dealt like the specs; shared (1, n_k) stay."""
    return [t[i::p].contiguous() if t.shape[0] == n_specs and n_specs > 1 else t for t in bounds]


def _per_process(settings, p: int):
    """The settings (BabSettings, InputSplitSettings) of one of `p` processes sharing a search:
    its share of the queue memory."""
    return type(settings)(**{**settings.__dict__, "max_memory": settings.max_memory // p})


def merge(shares: list[BabOutcome | None], sizes: list[int], check: Callable[[np.ndarray], bool]) -> BabOutcome:
    """Outcomes of shares dealt round-robin (share i holds specs i, i + p, ...) as one, in spec
    order. Share 0 ran here with `check` itself; another share's candidate counts only if `check`
    confirms it. A lost share (None) or an unconfirmed candidate proves nothing: -inf."""
    p, total = len(shares), sum(sizes)
    lower = [-math.inf] * total
    stats: dict = {}
    exhausted, proved = True, True
    for i, share in enumerate(shares):
        if share is None:
            exhausted = proved = False
            continue
        add_stats(stats, share.stats)
        if share.status == "counterexample" and (i == 0 or check(share.x)):
            return BabOutcome("counterexample", [-math.inf] * total, share.x, stats)
        lower[i::p] = share.lower  # an unconfirmed candidate's share reports -inf already
        exhausted = exhausted and share.exhausted
        proved = proved and share.status == "proved"
    return BabOutcome("proved" if proved else "unknown", lower, None, stats, exhausted=exhausted)


def merge_domains(first: BabOutcome, shares: list[BabOutcome | None], deals: list[list[Domain]],
                  check: Callable[[np.ndarray], bool]) -> BabOutcome:
    """The search that handed off its open domains (`first`) and the searches of their deals
    as one: a spec's bound is the least over what `first` closed and every share's; share 0
    ran here with `check` itself, another share's candidate counts only if `check` confirms
    it. A share lost (None) or stopped by a candidate the check rejects proves nothing below
    the domains it was dealt: their bounds are what it contributes."""
    lower, stats = list(first.lower), dict(first.stats)
    proved = first.stats.get("bab_leaves_open", 0) == 0
    exhausted = first.exhausted
    for i, (share, deal) in enumerate(zip(shares, deals)):
        if share is not None:
            add_stats(stats, share.stats)
            if share.status == "counterexample" and (i == 0 or check(share.x)):
                return BabOutcome("counterexample", [-math.inf] * len(lower), share.x, stats)
        if share is None or share.status == "counterexample":
            proved = exhausted = False
            lower = least_bounds(lower, deal)
            continue
        lower = [min(a, b) for a, b in zip(lower, share.lower)]
        proved = proved and share.status == "proved"
        exhausted = exhausted and share.exhausted
    return BabOutcome("proved" if proved else "unknown", lower, None, stats, exhausted=exhausted)


def search(workers: "SpecWorkers | None", net: "Layered | GraphTarget", specs: list, x_lo, x_hi, lower: list,
           upper: list, tolerance: float, deadline: float, check: Callable[[np.ndarray], bool],
           settings: BabSettings) -> BabOutcome:
    """branch_and_bound, shared out over `workers` if given (see SpecWorkers.search)."""
    if workers is None:
        return branch_and_bound(net, specs, x_lo, x_hi, lower, upper, tolerance, deadline, check, settings=settings)
    return workers.search(net, specs, x_lo, x_hi, lower, upper, tolerance, deadline, check, settings)


class SpecWorkers:
    """`processes` - 1 helper processes (none for 1) that take shares of a search's specs while
    the calling process does its own share."""

    def __init__(self, processes: int) -> None:
        self.processes = max(1, int(processes))
        self._pool: ProcessPoolExecutor | None = None
        if self.processes > 1:
            self._pool = ProcessPoolExecutor(self.processes - 1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(os.getpid(),))
            for _ in range(self.processes - 1):  # start the imports now, not at the first search
                self._pool.submit(_ready)

    def close(self) -> None:
        """Stop the helpers at once: a share still running (its caller found a counterexample,
        or gave up waiting) would otherwise take a core until its deadline."""
        if self._pool is not None:
            processes = list(getattr(self._pool, "_processes", {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                if process.is_alive():
                    process.terminate()
            self._pool = None

    def __enter__(self) -> "SpecWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search(self, net: "Layered | GraphTarget", specs: list, x_lo, x_hi, lower: list, upper: list, tolerance: float,
               deadline: float, check: Callable[[np.ndarray], bool], settings: BabSettings) -> BabOutcome:
        """branch_and_bound over `specs`, shared out: by specs where there are as many as
        processes (see `merge`), else by domains (see `merge_domains`). Root bounds are (1, n_k)
        or one row per spec; each process keeps its open domains within its share of
        settings.max_memory."""
        processes = self.processes if self._pool is not None else 1
        if len(specs) < processes and settings.order == "lowest" and settings.on_witness == "stop":
            return self._share_domains(net, specs, x_lo, x_hi, lower, upper, tolerance, deadline, check, settings)
        p = min(processes, len(specs))
        if p <= 1:
            return branch_and_bound(net, specs, x_lo, x_hi, lower, upper, tolerance, deadline, check,
                                    settings=settings)
        shared = _per_process(settings, p)
        n = len(specs)
        wall_deadline = time.time() + (deadline - time.perf_counter())
        futures = [self._submit(net, _packed(specs[i::p]), x_lo, x_hi, _share_bounds(lower, i, p, n),
                                _share_bounds(upper, i, p, n), tolerance, wall_deadline, shared) for i in range(1, p)]
        own = branch_and_bound(net, specs[0::p], x_lo, x_hi, _share_bounds(lower, 0, p, n),
                               _share_bounds(upper, 0, p, n), tolerance, deadline, check, settings=shared)
        results = self._collect(own, futures, deadline)
        return merge(results + [None] * (p - len(results)), [len(specs[i::p]) for i in range(p)], check)

    def _share_domains(self, net, specs: list, x_lo, x_hi, lower: list, upper: list, tolerance: float,
                       deadline: float, check: Callable[[np.ndarray], bool], settings: BabSettings) -> BabOutcome:
        """Fewer specs than processes (a property with one open disjunct): this process
        searches until a round's worth of domains per process is open, deals them out by bound
        (the lowest to every share alike), and every process goes on with its deal."""
        p = self.processes
        first = branch_and_bound(net, specs, x_lo, x_hi, lower, upper, tolerance, deadline, check,
                                 settings=settings, handoff=p * settings.batch)
        if not first.open:  # ended before handing off: proved, refuted, out of time or memory (search.py)
            return first
        shared = _per_process(settings, p)
        deals = [first.open[i::p] for i in range(p)]
        wall_deadline = time.time() + (deadline - time.perf_counter())
        packed = _packed(specs)
        futures = [self._submit(net, packed, x_lo, x_hi, lower, upper, tolerance, wall_deadline, shared, deals[i])
                   for i in range(1, p)]
        own = branch_and_bound(net, specs, x_lo, x_hi, lower, upper, tolerance, deadline, check, settings=shared,
                               start=deals[0])
        results = self._collect(own, futures, deadline)
        return merge_domains(first, results + [None] * (p - len(results)), deals, check)

    def input_search(self, graph, specs, x_lo, x_hi, lower, tolerance: float, deadline: float,
                     check: Callable, settings) -> "InputSplitOutcome":
        """input_branch_and_bound shared out by boxes: this process searches until each process
        has a round's worth of open boxes, deals them out by bound (round-robin over the sorted
        list), and every process goes on with its deal (see `merge_boxes`)."""
        from verifier.bab.input_split import input_branch_and_bound

        p = self.processes if self._pool is not None else 1
        if p <= 1:
            return input_branch_and_bound(graph, specs, x_lo, x_hi, lower, tolerance, deadline, check, settings)
        first = input_branch_and_bound(graph, specs, x_lo, x_hi, lower, tolerance, deadline, check, settings,
                                       handoff=p * settings.batch)
        if first.status != "handoff":
            return first
        shared = _per_process(settings, p)
        first.stats["input_handed_off"] = len(first.open[0])
        deals = [tuple(t[i::p] for t in first.open) for i in range(p)]
        wall_deadline = time.time() + (deadline - time.perf_counter())
        cpu = specs.to(torch.device("cpu"))
        futures = []
        for i in range(1, p):
            try:
                futures.append(self._pool.submit(_input_payload, _job(
                    graph.net, str(graph.device), cpu.rows, cpu.const, cpu.owner, cpu.count, x_lo.cpu(), x_hi.cpu(),
                    lower.cpu(), tolerance, wall_deadline, shared, deals[i])))
            except RuntimeError:  # the pool is broken or shut down
                futures.append(None)
        own = input_branch_and_bound(graph, specs, x_lo, x_hi, lower, tolerance, deadline, check, shared,
                                     start=deals[0])
        results = self._collect(own, futures, deadline)
        return merge_boxes(first, results + [None] * (p - len(results)), deals, check)

    def _submit(self, *args):
        """A share's search submitted to a helper (`_search_packed`'s arguments); None if the
        pool is broken or shut down."""
        try:
            return self._pool.submit(_search_payload, _job(*args))
        except RuntimeError:
            return None

    def _collect(self, own: BabOutcome, futures: list, deadline: float) -> list:
        """This process's share, then the helpers' as they answer by the deadline (None for a
        share lost or late); none once this process's own share found a counterexample."""
        results: list = [own]
        if own.status == "counterexample":
            return results
        end = deadline + GRACE
        lost = False
        for future in futures:
            try:
                results.append(future.result(timeout=max(end - time.perf_counter(), 0.0))
                               if future is not None else None)
            except FutureTimeout:  # late (a loaded machine): this share proves nothing
                results.append(None)
            except Exception:  # a lost share proves nothing; the others still count
                results.append(None)
                lost = True
        if lost or None in futures:
            # A helper died or never started (e.g. a script without the __main__ guard):
            # later searches stay in this process rather than lose shares again. A share
            # that was only late keeps the helpers: they end on the same deadline.
            self.close()
        return results
