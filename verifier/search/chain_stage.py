"""The bound-propagation stages of a region search on the dense ReLU chain engine (the measured
fast path for MLPs on a CPU): alpha-CROWN on every layer's bounds and on each disjunct, and the
engine functions of bab_stages.py (refinement passes, per-disjunct bounds, branch and bound).

alpha-CROWN's pre-activation bounds go back into the network-level bounds dict once, so the LP
and MIP stages that may follow profit from them too; after it the bounds stay torch tensors in
the engine's state (`ChainBounds`) through refinement and search.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from verifier.bab.crown import intermediate_bounds, optimise_alpha
from verifier.bab.layered import Layered, as_layered
from verifier.bab.output_bounds import constrained_bounds, crossed
from verifier.bab.parallel import SpecWorkers, search
from verifier.bab.refine import refined_bounds
from verifier.bounds.graph import compiled
from verifier.bounds.interval import Bounds, interval_bounds


@dataclass
class ChainBounds:
    """The chain engine's state of a run: the chain, the box and every ReLU layer's (1, n_k)
    pre-activation bounds as torch tensors, kept as such between the stages."""

    layered: Layered
    x_lo: torch.Tensor
    x_hi: torch.Tensor
    lower: list
    upper: list


def chain_of(run) -> Layered | None:
    """The run's network as a dense ReLU chain (the fast path for MLPs on the CPU), or None
    where it is not one (plan.engines_to_try says when a run asks)."""
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


def alpha_crown(run, layered: Layered, bounds: Bounds, budget: float) -> tuple[Bounds, ChainBounds]:
    """Tighten every ReLU layer's bounds and each open disjunct's lower bound with alpha-CROWN
    within `budget` seconds; returns the bounds dict with the tighter pre-activation bounds, and
    the engine's state for the stages that follow."""
    start = time.perf_counter()
    x_lo, x_hi, lo, hi = _tensors(run, layered, bounds)
    lo, hi = intermediate_bounds(layered, x_lo, x_hi, lo, hi, run.options.alpha_steps, start + budget)
    _prove_disjuncts(run, layered, x_lo, x_hi, lo, hi)
    run.stats["time_alpha_crown"] = round(time.perf_counter() - start, 4)
    bounds = _write_back(run, layered, bounds, lo, hi)
    return bounds, ChainBounds(layered, *_tensors(run, layered, bounds))


def refinable(state: ChainBounds) -> int:
    """ReLU layers whose bounds a refinement can tighten (all after the first)."""
    return state.layered.depth - 1


def refine_pass(run, state: ChainBounds, per_layer: float, layers: int, end: float, finished: dict,
                workers: SpecWorkers | None = None) -> dict:
    """One refinement pass (bab_stages.refine): the first `layers` layers after the first
    refined by branch and bound, `per_layer` seconds each on average; updates `state`."""
    state.lower, state.upper, stats = refined_bounds(
        state.layered, state.x_lo, state.x_hi, state.lower, state.upper, run.options.alpha_steps, per_layer, layers,
        end, max_memory=run.plan.settings.max_memory,
        max_resident=run.plan.settings.max_resident, finished=finished, workers=workers, **run.plan.refine_mode)
    state.lower, state.upper = _intersected(run, state)
    return stats


def _intersected(run, state: ChainBounds) -> tuple[list, list]:
    """The layer bounds intersected with interval propagation through them (the network's
    compiled intervals, with rounding slack): a refined layer can tighten the next one beyond
    what CROWN makes of it, which uses a layer's bounds only in its relaxation."""
    graph = compiled(run.net)
    nodes = [graph.index[p] for p in state.layered.pre_nodes]
    boxes = graph.interval(state.x_lo, state.x_hi, {i: (l, h) for i, l, h in zip(nodes, state.lower, state.upper)})
    return [boxes[i][0] for i in nodes], [boxes[i][1] for i in nodes]


def prove(run, state: ChainBounds) -> None:
    """alpha-CROWN on each open disjunct with the current layer bounds."""
    _prove_disjuncts(run, state.layered, state.x_lo, state.x_hi, state.lower, state.upper)


def constrained(run, state: ChainBounds, d: int, deadline: float) -> tuple[tuple[list, list], float]:
    """Disjunct d's layer bounds valid where it is not yet proven (its last
    `output_bound_layers` layers tightened in `output_bound_rounds` passes) and alpha-CROWN's
    bound on d with them (inf where they cross); bab_stages.constrain records it."""
    layered = state.layered
    rows, const = layered.spec_rows(run.disjuncts[d].C, run.disjuncts[d].d)
    d_lo, d_hi = constrained_bounds(layered, rows, const, run.options.tolerance, state.x_lo, state.x_hi,
                                    state.lower, state.upper, run.options.output_bound_layers,
                                    run.options.output_bound_rounds, deadline=deadline)
    if crossed(d_lo, d_hi):  # nothing in the box violates the disjunct by more than the tolerance
        return (d_lo, d_hi), math.inf
    value = optimise_alpha(layered, layered.depth, rows[None], const[None], state.x_lo, state.x_hi, d_lo, d_hi,
                           run.options.alpha_steps, deadline=deadline)
    return (d_lo, d_hi), float(value.max())


def bab_search(run, state: ChainBounds, disjuncts: list[int], deadline: float,
               per_disjunct: dict | None = None, workers: SpecWorkers | None = None):
    """One branch and bound over all open disjuncts (their domains share the rounds). Returns
    the evidence of a violation or None; proven lower bounds go to the run either way.
    `per_disjunct` ({d: ((lower, upper) or None, constrained)} from bab_stages.constrain, for
    every d) gives each disjunct its own layer bounds; constrained ones are valid only where it
    is unproven, so what they prove is capped (RunState.prove_constrained). `workers` share the
    disjuncts out over processes."""
    deadline = min(deadline, run.deadline)
    if time.perf_counter() > deadline:  # nothing to search with: the bounds stay as they are
        return None
    layered, x_lo, x_hi, lo, hi = state.layered, state.x_lo, state.x_hi, state.lower, state.upper
    capped = set()
    if per_disjunct is not None:
        own = [per_disjunct[d][0] if per_disjunct[d][0] is not None else (lo, hi) for d in disjuncts]
        lo = [torch.cat([o[0][k] for o in own]) for k in range(layered.depth)]
        hi = [torch.cat([o[1][k] for o in own]) for k in range(layered.depth)]
        capped = {d for d in disjuncts if per_disjunct[d][1]}
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
    run.record_search(disjuncts, out, capped, start)
    if out.status == "counterexample":
        return evidence[0]
    return None
