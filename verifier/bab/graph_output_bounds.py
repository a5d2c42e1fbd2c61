"""Layer bounds under a disjunct's own negation ("output constraints") on a bound graph: the
graph engine's form of output_bounds.py, whose docstring gives the argument and what such
bounds prove (only the disjunct they were made for; capped at the tolerance).

On U = {x in the box: rows @ y(x) + const <= tolerance}, for any lambda >= 0,
z_j(x) >= z_j(x) + lambda @ (rows @ y(x) + const - tolerance); one walk from the output with
the rows of z_j injected at its node (`walker.backward_bound(inject=...)`) bounds that sum over
the box, and lambda is optimised with the slopes. Bounds of later nodes used on the way may
themselves hold only on U: the relaxations they give hold for every x in U, which is all the
argument needs.
"""

from __future__ import annotations

import math
import time
from typing import Mapping

import torch

from verifier.bounds.alpha import (adam, adam_seconds, ascent_step, chunk_entries, pass_seconds, selection,
                                   split_ancestors)
from verifier.bounds.graph import BoundGraph, Box
from verifier.bounds.walker import ABS_SLACK, EXACT, FAST, REL_SLACK, Relaxation, backward_bound, extents_of
from verifier.deadline import Pace, fits


def _tighten_node(graph: BoundGraph, split: int, rows: torch.Tensor, const: torch.Tensor, x_lo, x_hi,
                  known: dict[int, Box], steps: int, lr: float, deadline: float) -> dict[int, Box]:
    """Split node `split`'s unstable inputs bounded on U (module docstring), in chunks of
    entries whose walks keep within chunk_entries coefficients per node (as alpha.node_bounds);
    rows (m, n_out), const (m,) already shifted by the tolerance. Entries not reached in time
    keep their bounds."""
    p = graph.pre(split)
    lo, hi = known[p]
    idx = torch.nonzero(graph.nodes[split].op.uncertain(lo[0], hi[0])).flatten()
    if idx.numel() == 0:
        return known
    boxes = {i: b for i, b in enumerate(graph.interval(x_lo, x_hi, known)) if b is not None}
    widest = max(graph.nodes[i].size for i in graph.ancestors[graph.output] | {graph.output})
    new_lo, new_hi = lo.clone(), hi.clone()
    for part in idx.split(max(1, chunk_entries(lo.device) // (2 * widest))):
        bound = _constrained_entries(graph, p, part, rows, const, x_lo, x_hi, boxes, steps, lr, deadline)
        if bound is None:  # out of time: the rest keep their bounds
            break
        k = part.numel()
        new_lo[0, part] = torch.fmax(new_lo[0, part], bound[:k])
        new_hi[0, part] = torch.fmin(new_hi[0, part], -bound[k:])
    return {**known, p: (new_lo, new_hi)}


def _constrained_entries(graph: BoundGraph, p: int, part: torch.Tensor, rows, const, x_lo, x_hi,
                         boxes: dict[int, Box], steps: int, lr: float, deadline: float) -> torch.Tensor | None:
    """Lower bounds on U of +z_p[part] then -z_p[part] (2k values); None unless a step and the
    final float64 walk fit before `deadline` (at lambda = 0 the bound would be the plain one)."""
    out, n, m = graph.output, part.numel(), rows.shape[0]
    step_cost, final_cost = pass_seconds(graph, out, 2 * n, FAST, grad=True), pass_seconds(graph, out, 2 * n)
    if not fits(deadline, adam_seconds() + step_cost + final_cost):
        return None
    inject = selection(part, graph.nodes[p].size, EXACT, rows.device)[0]
    splits = split_ancestors(graph, out)
    fast_graph = graph.to(FAST)
    fast = Relaxation.of(fast_graph, boxes)
    f_rows, f_const, f_lo, f_hi, f_inject = (t.to(FAST) for t in (rows, const, x_lo, x_hi, inject))
    lam = torch.zeros((1, 2 * n, m), dtype=FAST, device=rows.device, requires_grad=True)
    alphas = {s: fast.data[s].default_slope.expand(-1, 2 * n, -1).clone().requires_grad_() for s in splits}
    opt = adam([{"params": list(alphas.values()), "lr": 0.1}, {"params": [lam], "lr": lr}])
    pace = Pace(deadline, step_cost, final_cost)
    for _ in range(steps):
        if not pace.next():
            break
        value = backward_bound(fast_graph, out, lam @ f_rows, (lam @ f_const.unsqueeze(-1)).squeeze(-1), f_lo, f_hi,
                               fast, alphas, inject={p: f_inject}).value
        ascent_step(opt, value.sum(), list(alphas.values()), [lam])
    with torch.no_grad():
        lam64 = lam.detach().to(EXACT)
        extents = extents_of(boxes)
        exact = Relaxation.of(graph, boxes, extents)
        bound = backward_bound(graph, out, lam64 @ rows, (lam64 @ const.unsqueeze(-1)).squeeze(-1), x_lo, x_hi, exact,
                               {s: a.detach().to(EXACT) for s, a in alphas.items()}, inject={p: inject}).value[0]
        # The walk's slack covers the rows it is handed; forming lambda @ rows (and its
        # constant) rounds too, by at most ~m 2^-53 of |lambda| |rows| |y| (+ |lambda| |const|).
        combine = ((lam64.abs() @ rows.abs()) @ extents[out].reshape(-1) + lam64.abs() @ const.abs())[0]
        return bound - REL_SLACK * combine - ABS_SLACK


def constrained_bounds(graph: BoundGraph, rows: torch.Tensor, const: torch.Tensor, tolerance: float, x_lo, x_hi,
                       known: Mapping[int, Box], layers: int, rounds: int, steps: int = 30, lr: float = 0.1,
                       deadline: float = math.inf) -> dict[int, Box]:
    """`known` with the inputs of the last `layers` split nodes bounded on
    U = {x in box: rows @ y + const <= tolerance}, in `rounds` passes from the earliest of them
    on; never looser. Relaxed nodes that are not split (a max pool) keep their box-wide bounds.
    The caller checks for crossed bounds (`crossed`)."""
    shifted = const - tolerance
    known = dict(known)
    chosen = graph.splits[max(len(graph.splits) - layers, 0):]
    for _ in range(rounds):
        for s in chosen:
            if time.perf_counter() > deadline:
                return known
            known = _tighten_node(graph, s, rows, shifted, x_lo, x_hi, known, steps, lr, deadline)
            if crossed(known):  # U is empty: nothing more to learn
                return known
    return known


def crossed(known: Mapping[int, Box]) -> bool:
    """True if some node's bounds cross: the set they were computed on is empty."""
    return any(bool((lo > hi).any()) for lo, hi in known.values())
