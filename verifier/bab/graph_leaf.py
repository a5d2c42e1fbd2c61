"""Exact bounds for a fully split domain of a graph search: once every unstable ReLU on the way
to the start node is fixed to a side, the minimum over the domain is one LP over the input box
(a MILP if a Maximum still has several live candidates), built by `encode/` from the domain's
bounds with the split constraints added.

The split constraints z >= 0 / z <= 0 are loosened by LOOSEN so that solver tolerance cannot cut
off real inputs on the boundary. An LP's value is replaced by the dual-derived safe bound; an
infeasible LP counts only with a checked Farkas certificate (as the chain leaves, bab/leaf.py);
a MILP counts only when finished, by its dual bound (an infeasible one proves nothing).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from solvers import make_solver
from solvers.base import SolveOptions, SolveStatus
from verifier.bab.leaf import checked_lp_bound
from verifier.deadline import model_seconds
from verifier.encode.extend import extend
from verifier.encode.network import encode_network

#: Split constraints z >= 0 / z <= 0 are loosened to z >= -LOOSEN / z <= LOOSEN.
LOOSEN = 1e-6


def leaf_seconds(problem) -> float:
    """Expected seconds to encode a leaf and hand it to HiGHS (about 10 nonzeros per weight
    entry the walk passes is generous for substituted expressions)."""
    from verifier.bounds.walker import walk_cost

    return model_seconds(10 * walk_cost(problem.graph, problem.start))


def leaf_bound(problem, spec: int, signs: list, lower: list, upper: list, time_limit: float):
    """(safe lower bound on min over the domain of max_r rows_r value(start) + const_r, minimiser
    or None). Any unstable ReLU left unsplit on the way makes it no leaf: -inf."""
    graph, net = problem.graph, problem.graph.net
    for op, l, u in zip(problem.ops, lower, upper):
        if bool(op.uncertain(l, u).any()):
            return -np.inf, None
    known = dict(problem.fixed)
    known.update({p: (l[None], u[None]) for p, l, u in zip(problem.pre, lower, upper)})
    boxes = graph.interval(problem.x_lo, problem.x_hi, known, upto=problem.start)
    if any(bool((b[0] > b[1]).any()) for b in boxes if b is not None):
        return np.inf, None  # crossed bounds: the domain holds no input
    names = [graph.nodes[i].name for i in range(1, problem.start + 1) if boxes[i] is not None]
    bounds = {graph.nodes[i].name: (b[0][0].cpu().numpy(), b[1][0].cpu().numpy()) for i, b in enumerate(boxes) if b is not None}
    enc = encode_network(net, bounds, names)
    rows, lo_rows, hi_rows = [], [], []
    for p, s in zip(problem.pre, signs):
        h = enc.handles[graph.nodes[p].name]
        s = s.cpu().numpy()
        for side, picked in ((-1, np.flatnonzero(s < 0)), (1, np.flatnonzero(s > 0))):
            if picked.size:
                rows.append(h.widened(enc.problem.num_cols)[picked])
                c = h.const[picked]
                lo_rows.append(-c - LOOSEN if side < 0 else np.full(picked.size, -np.inf))
                hi_rows.append(np.full(picked.size, np.inf) if side < 0 else -c + LOOSEN)
    base = enc.problem
    if rows:
        base, _ = extend(base, rows=sp.vstack(rows), row_lo=np.concatenate(lo_rows), row_hi=np.concatenate(hi_rows))
    enc.problem = base
    C, d = problem.rows[spec].cpu().numpy(), -problem.const[spec].cpu().numpy()
    start = graph.nodes[problem.start].name
    milp = enc.minimising_max(start, C, d, bounds[start])
    cols = enc.input_cols
    if milp.integer.any():
        solver = make_solver("highs", milp)
        res = solver.solve(SolveOptions(time_limit=time_limit))
        # "Infeasible" from a MILP comes without a certificate to check (an LP's does, below):
        # it proves nothing, and the leaf stays open.
        finished = res.status == SolveStatus.OPTIMAL
        return (res.dual_bound if finished else -np.inf), (res.x[cols] if res.x is not None else None)
    bound, x = checked_lp_bound(milp, time_limit)
    return bound, (x[cols] if x is not None else None)
