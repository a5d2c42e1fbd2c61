"""The bound-propagation stages of a region search, for networks that are plain ReLU chains:
alpha-CROWN on every layer's bounds and on each disjunct, refinement of the layer bounds, and
branch and bound over ReLU splits in place of the MIP (when the plan says so, plan.py).

The tightened pre-activation bounds go back into the network-level bounds dict, so the LP and
MIP stages that may follow profit from them too — except the per-disjunct bounds of `constrain`,
valid only where their disjunct is unproven, which stay with the final search.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from verifier.bab.crown import intermediate_bounds, optimise_alpha
from verifier.bab.layered import Layered, as_layered
from verifier.bab.output_bounds import constrained_bounds, crossed, proven_above
from verifier.bab.parallel import SpecWorkers, search
from verifier.bab.refine import refined_bounds
from verifier.bab.search import add_stats
from verifier.bounds.interval import Bounds, interval_bounds
from verifier.search.threads import set_threads


def chain_of(run) -> Layered | None:
    """The run's network as a dense ReLU chain (the fast path for MLPs on the CPU), or None."""
    options = run.options
    if options.bab == "off" or options.engine != "auto" or options.device != "cpu":
        return None
    return as_layered(run.net, run.deadline)


def _tensors(run, layered: Layered, bounds: Bounds):
    lo = [torch.as_tensor(bounds[p][0]).reshape(1, -1).clone() for p in layered.pre_nodes]
    hi = [torch.as_tensor(bounds[p][1]).reshape(1, -1).clone() for p in layered.pre_nodes]
    box = run.region.box
    return torch.as_tensor(box.lo), torch.as_tensor(box.hi), lo, hi


def _prove_disjuncts(run, layered: Layered, x_lo, x_hi, lo, hi) -> None:
    """alpha-CROWN lower bound of each open disjunct's slack (the max of its rows' bounds)."""
    for d in run.open():
        rows, const = layered.spec_rows(run.disjuncts[d].C, run.disjuncts[d].d)
        value = optimise_alpha(layered, layered.depth, rows[None], const[None], x_lo, x_hi, lo, hi,
                               run.options.alpha_steps, deadline=run.deadline)
        run.prove(d, float(value.max()))


def _write_back(run, layered: Layered, bounds: Bounds, lo, hi) -> Bounds:
    known = {p: (lo[k][0].numpy(), hi[k][0].numpy()) for k, p in enumerate(layered.pre_nodes)}
    box = run.region.box
    return interval_bounds(run.net, box.lo, box.hi, {**bounds, **known})


def alpha_crown(run, layered: Layered, bounds: Bounds, budget: float) -> Bounds:
    """Tighten every ReLU layer's bounds and each open disjunct's lower bound with alpha-CROWN
    within `budget` seconds; returns the bounds dict with the tighter pre-activation bounds."""
    set_threads(run.options)
    start = time.perf_counter()
    x_lo, x_hi, lo, hi = _tensors(run, layered, bounds)
    lo, hi = intermediate_bounds(layered, x_lo, x_hi, lo, hi, run.options.alpha_steps, start + budget)
    _prove_disjuncts(run, layered, x_lo, x_hi, lo, hi)
    run.stats["time_alpha_crown"] = round(time.perf_counter() - start, 4)
    return _write_back(run, layered, bounds, lo, hi)


def refine(run, layered: Layered, bounds: Bounds, budget: float, workers: SpecWorkers | None = None) -> Bounds:
    """Refine the layer bounds by branch and bound over the earlier layers' splits (up to
    `refine_layers` layers) and bound the open disjuncts again, in passes of doubling length
    (2 s per layer first) within `budget` seconds: an instance that a short refinement already
    proves does not pay for a long one, and each pass starts from the bounds the last reached.
    `workers` (see `spec_workers`) share each layer's search out over processes."""
    layers = min(run.options.refine_layers, layered.depth - 1)
    if layers <= 0:
        return bounds
    set_threads(run.options)
    start = time.perf_counter()
    end = start + budget
    x_lo, x_hi, lo, hi = _tensors(run, layered, bounds)
    per_layer = run.options.refine_first_pass
    stall = run.plan.refine_stall
    worst = -math.inf
    finished: dict = {}  # layers whose search closed every domain (see refined_bounds)
    while run.open() and time.perf_counter() < end:
        began = time.perf_counter()
        per_layer = min(per_layer, (end - time.perf_counter()) / layers)
        lo, hi, stats = refined_bounds(layered, x_lo, x_hi, lo, hi, run.options.alpha_steps, per_layer,
                                       layers, end, max_memory=run.plan.settings.max_memory, finished=finished,
                                       workers=workers, **run.plan.refine_mode)
        for key, value in stats.items():
            run.stats[key] = round(run.stats.get(key, 0) + value, 4)
        if stats.get("refine_skipped", 0) >= layers:  # every refined layer finished: nothing left to gain
            break
        _prove_disjuncts(run, layered, x_lo, x_hi, lo, hi)
        run.note("refinement pass", began, per_layer=per_layer, domains=stats.get("refine_domains", 0),
                 skipped=stats.get("refine_skipped", 0))
        per_layer *= 2
        before, worst = worst, run.worst_open()
        if math.isfinite(before) and worst - before < stall * abs(before):
            run.stats["refine_stalled"] = 1
            break
    return _write_back(run, layered, bounds, lo, hi)


def spec_workers(options) -> SpecWorkers | None:
    """Helper processes for the searches (option `processes`), started now so that they import
    while this process works; None for one process. The caller closes them."""
    if options.processes <= 1:
        return None
    try:
        return SpecWorkers(options.processes)
    except (OSError, RuntimeError, ValueError):  # no process support here (e.g. a daemonic parent)
        return None


def constrain(run, layered: Layered, bounds: Bounds, disjuncts: list[int], budget: float) -> dict:
    """Per open disjunct, the layer bounds valid where it is not yet proven (its last
    `output_bound_layers` layers tightened in `output_bound_rounds` passes) within `budget`
    seconds; a disjunct they prove is recorded and left out. Returns {d: (lower, upper,
    constrained)}: a disjunct reached after the budget keeps the plain bounds (constrained
    False), whose search results need no capping (see `bab_search`)."""
    set_threads(run.options)
    start = time.perf_counter()
    end = start + budget
    x_lo, x_hi, lo, hi = _tensors(run, layered, bounds)
    tolerance, out = run.options.tolerance, {}
    for d in disjuncts:
        if time.perf_counter() > end:
            out[d] = (lo, hi, False)
            continue
        rows, const = layered.spec_rows(run.disjuncts[d].C, run.disjuncts[d].d)
        d_lo, d_hi = constrained_bounds(layered, rows, const, tolerance, x_lo, x_hi, lo, hi,
                                        run.options.output_bound_layers, run.options.output_bound_rounds,
                                        deadline=end)
        if crossed(d_lo, d_hi):  # nothing in the box violates the disjunct by more than the tolerance
            run.prove(d, proven_above(math.inf, tolerance))
            continue
        value = float(optimise_alpha(layered, layered.depth, rows[None], const[None], x_lo, x_hi, d_lo, d_hi,
                                     run.options.alpha_steps, deadline=end).max())
        run.prove(d, proven_above(value, tolerance))
        if not value > tolerance:
            out[d] = (d_lo, d_hi, True)
    run.stats["time_output_bounds"] = round(run.stats.get("time_output_bounds", 0) + time.perf_counter() - start, 4)
    return out


def bab_search(run, layered: Layered, bounds: Bounds, disjuncts: list[int], deadline: float,
               per_disjunct: dict | None = None, workers: SpecWorkers | None = None):
    """One branch and bound over all open disjuncts (their domains share the rounds). Returns
    the evidence of a violation or None; proven lower bounds go to the run either way.
    `per_disjunct` ({d: (lower, upper, constrained)} from `constrain`, for every d) gives each
    disjunct its own layer bounds; constrained ones are valid only where it is unproven, so
    what they prove is capped (output_bounds.proven_above). `workers` share the disjuncts out
    over processes."""
    deadline = min(deadline, run.deadline)
    if time.perf_counter() > deadline:  # nothing to search with: the bounds stay as they are
        return None
    set_threads(run.options)
    x_lo, x_hi, lo, hi = _tensors(run, layered, bounds)
    capped = set()
    if per_disjunct is not None:
        lo = [torch.cat([per_disjunct[d][0][k] for d in disjuncts]) for k in range(layered.depth)]
        hi = [torch.cat([per_disjunct[d][1][k] for d in disjuncts]) for k in range(layered.depth)]
        capped = {d for d in disjuncts if per_disjunct[d][2]}
    evidence: list = []

    def confirm(x: np.ndarray) -> bool:
        found = run.confirm(x)
        if found is not None:
            evidence.append(found)
        return found is not None

    start = time.perf_counter()
    specs = [layered.spec_rows(run.disjuncts[d].C, run.disjuncts[d].d) for d in disjuncts]
    settings = run.plan.settings
    out = search(workers, layered, specs, x_lo, x_hi, lo, hi, run.options.tolerance, deadline, confirm, settings)
    add_stats(run.stats, out.stats)  # over the stages
    run.stats["time_bab"] = round(run.stats.get("time_bab", 0) + time.perf_counter() - start, 4)
    if out.status == "counterexample":
        return evidence[0]
    for d, value in zip(disjuncts, out.lower):
        run.prove(d, proven_above(value, run.options.tolerance) if d in capped else value)
    return None
