"""The bound-engine stages of a region search on any graph the engine compiles (residual adds,
convolutions kept as convolutions, pooling, LeakyReLU/Clip lowered to ReLUs): alpha-CROWN on
every relaxed node's input and on each disjunct, and the engine functions of bab_stages.py
(refinement passes, per-disjunct bounds, branch and bound over ReLU splits on the graph in place
of the MIP). Dense ReLU chains keep their measured fast path (chain_stage.py).

Bounds stay torch tensors on the run's device between these stages; the numpy bounds dict the
LP/MIP stages read is written once, on the way out.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from verifier.bab import graph_refine
from verifier.bab.graph_output_bounds import constrained_bounds, crossed
from verifier.bab.graph_problem import GraphTarget, spec_rows
from verifier.bab.parallel import search
from verifier.bounds.alpha import layer_bounds, optimise_alpha
from verifier.bounds.graph import BoundGraph, compiled, resolve_device
from verifier.bounds.walker import EXACT


def graph_of(run) -> BoundGraph:
    """The run's network compiled on its device (cached with the network)."""
    return compiled(run.net, resolve_device(run.options.device), EXACT)


class GraphBounds:
    """The engine's view of a run's bounds: the box and every node's (1, n) bounds on the device."""

    def __init__(self, run, graph: BoundGraph, bounds: dict) -> None:
        self.graph = graph
        dev = graph.device
        box = run.region.box
        self.x_lo = torch.as_tensor(box.lo, dtype=EXACT, device=dev)
        self.x_hi = torch.as_tensor(box.hi, dtype=EXACT, device=dev)
        self.known = {i: (torch.as_tensor(bounds[n.name][0], dtype=EXACT, device=dev).reshape(1, -1),
                          torch.as_tensor(bounds[n.name][1], dtype=EXACT, device=dev).reshape(1, -1))
                      for i, n in enumerate(graph.nodes) if i > 0 and n.name in bounds}

    def boxes(self) -> list:
        return self.graph.interval(self.x_lo, self.x_hi, self.known)

    def numpy(self, bounds: dict) -> dict:
        """The bounds dict with every node's bounds intersected with the engine's."""
        out = dict(bounds)
        for i, box in enumerate(self.boxes()):
            if box is None:  # a node the output does not depend on
                continue
            lo, hi = box
            name = self.graph.nodes[i].name
            lo, hi = lo[0].cpu().numpy(), hi[0].cpu().numpy()
            if name in out:
                lo, hi = np.maximum(lo, out[name][0]), np.minimum(hi, out[name][1])
            out[name] = (lo, hi)
        return out


def _present(boxes: list) -> dict:
    """The boxes of a graph.interval list by node index, without the nodes the output does not
    depend on (None there)."""
    return {i: b for i, b in enumerate(boxes) if b is not None}


def _disjunct_rows(run, graph: BoundGraph, d: int):
    rows, const = spec_rows(run.disjuncts[d].C, run.disjuncts[d].d)
    return rows.to(graph.device), const.to(graph.device)


def crown(run, bounds: dict, rows: np.ndarray, offsets: np.ndarray) -> tuple[dict, np.ndarray]:
    """CROWN (default slopes, no optimisation) on every relaxed node's input in topological
    order, then on the property's rows C @ y - d (`rows`, `offsets` = d): the cheap linear bounds
    a run on a GPU starts with (plan.first_walk), by the same walk the later stages optimise.
    Neurons not reached by run.deadline keep the bounds they had. Returns the numpy bounds dict
    (tightened) and a lower bound per row (-inf for rows not bounded in time)."""
    graph = graph_of(run)
    state = GraphBounds(run, graph, bounds)
    state.known = layer_bounds(graph, state.x_lo, state.x_hi, state.known, 0, run.deadline)
    boxes = _present(state.boxes())
    c = torch.as_tensor(np.asarray(rows, dtype=np.float64), device=graph.device)[None]
    d = -torch.as_tensor(np.asarray(offsets, dtype=np.float64), device=graph.device)[None]
    lower = optimise_alpha(graph, graph.output, c, d, state.x_lo, state.x_hi, boxes, 0, deadline=run.deadline)
    return state.numpy(bounds), lower[0].cpu().numpy()


def alpha_crown(run, graph: BoundGraph, bounds: dict, budget: float) -> tuple[dict, GraphBounds]:
    """alpha-CROWN within `budget` seconds: each open disjunct first on the layer bounds CROWN
    left (one walk per step from the output: cheap, and on easy instances all it
    takes), then every relaxed node's input bounds (one walk per step from each of them: most
    of the cost on CNNs) and the disjuncts again. Returns the numpy bounds dict (tightened) and
    the engine's bounds for the stages that follow."""
    start = time.perf_counter()
    end = min(run.deadline, start + budget)
    state = GraphBounds(run, graph, bounds)
    _prove(run, state, end)
    if run.open():
        state.known = layer_bounds(graph, state.x_lo, state.x_hi, state.known, run.options.alpha_steps, end)
        _prove(run, state, run.deadline)
    run.stats["time_alpha_crown"] = round(time.perf_counter() - start, 4)
    return state.numpy(bounds), state


def prove(run, state: GraphBounds) -> None:
    """alpha-CROWN on each open disjunct with the current layer bounds."""
    _prove(run, state, run.deadline)


def _prove(run, state: GraphBounds, deadline: float) -> None:
    """alpha-CROWN on each open disjunct with the current layer bounds."""
    boxes = _present(state.boxes())
    for d in run.open():
        run.prove(d, _disjunct_bound(run, state, d, boxes, deadline))


def _disjunct_bound(run, state: GraphBounds, d: int, boxes: dict, deadline: float) -> float:
    """alpha-CROWN's lower bound on disjunct d's slack (the max of its rows') with `boxes`."""
    graph = state.graph
    rows, const = _disjunct_rows(run, graph, d)
    return float(optimise_alpha(graph, graph.output, rows[None], const[None], state.x_lo, state.x_hi, boxes,
                                run.options.alpha_steps, deadline=deadline).max())


def refinable(state: GraphBounds) -> int:
    """Split nodes whose bounds a refinement can tighten (graph_refine.refinable)."""
    return len(graph_refine.refinable(state.graph))


def refine_pass(run, state: GraphBounds, per_layer: float, layers: int, end: float, finished: dict,
                workers=None) -> dict:
    """One refinement pass (bab_stages.refine): the first `layers` refinable split nodes refined
    by branch and bound, `per_layer` seconds each on average; updates `state`."""
    state.known, stats = graph_refine.refined_bounds(
        state.graph, state.x_lo, state.x_hi, state.known, run.options.alpha_steps, per_layer, layers, end,
        max_memory=run.plan.settings.max_memory,
        max_resident=run.plan.settings.max_resident, finished=finished, workers=workers, **run.plan.refine_mode)
    return stats


def constrained(run, state: GraphBounds, d: int, deadline: float) -> tuple[dict, float]:
    """Disjunct d's bounds valid where it is not yet proven (its last `output_bound_layers`
    split nodes' inputs tightened in `output_bound_rounds` passes) and alpha-CROWN's bound on d
    with them (inf where they cross); bab_stages.constrain records it."""
    rows, const = _disjunct_rows(run, state.graph, d)
    known = constrained_bounds(state.graph, rows, const, run.options.tolerance, state.x_lo, state.x_hi, state.known,
                               run.options.output_bound_layers, run.options.output_bound_rounds, deadline=deadline)
    if crossed(known):  # nothing in the box violates the disjunct by more than the tolerance
        return known, math.inf
    boxes = _present(state.graph.interval(state.x_lo, state.x_hi, known))
    return known, _disjunct_bound(run, state, d, boxes, deadline)


def bab_search(run, state: GraphBounds, disjuncts: list[int], deadline: float, per_disjunct: dict | None = None,
               workers=None):
    """One branch and bound on the graph over the open disjuncts (their domains share the
    rounds). Returns the evidence of a violation or None; proven bounds go to the run.
    `per_disjunct` ({d: (known or None, constrained)} from bab_stages.constrain, for every d)
    gives each disjunct its own split-node bounds; constrained ones are valid only where it is
    unproven, so what they prove is capped (RunState.prove_constrained)."""
    deadline = min(deadline, run.deadline)
    if time.perf_counter() > deadline or not disjuncts:
        return None
    graph = state.graph
    boxes = state.boxes()
    target = GraphTarget(graph, graph.output, _present(boxes))
    pres = [graph.pre(s) for s in target.splits]
    lower, upper = [boxes[p][0] for p in pres], [boxes[p][1] for p in pres]
    capped = set()
    if per_disjunct is not None:
        own = [boxes if per_disjunct[d][0] is None else graph.interval(state.x_lo, state.x_hi, per_disjunct[d][0])
               for d in disjuncts]
        lower = [torch.cat([b[p][0] for b in own]) for p in pres]
        upper = [torch.cat([b[p][1] for b in own]) for p in pres]
        capped = {d for d in disjuncts if per_disjunct[d][1]}
    evidence: list = []

    def confirm(x) -> bool:
        found = run.confirm(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64))
        if found is not None:
            evidence.append(found)
        return found is not None

    start = time.perf_counter()
    specs = [_disjunct_rows(run, graph, d) for d in disjuncts]
    settings = run.plan.settings
    out = search(workers, target, specs, state.x_lo, state.x_hi, lower, upper, run.options.tolerance, deadline,
                 confirm, settings)
    run.record_search(disjuncts, out, capped, start)
    if out.status == "counterexample":
        return evidence[0] if evidence else None
    return None
