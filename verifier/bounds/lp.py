"""Progressive LP tightening (as in MIPVerify) with bounds that are safe against solver tolerance.

For each ReLU, layer by layer, the pre-activations that interval arithmetic leaves ambiguous
(l < 0 < u) are minimised and maximised over the LP relaxation of the network up to that layer,
built with the bounds already tightened. Every LP value is replaced by a bound derived from the
LP's duals (valid for *any* dual vector), so a solver's tolerance can never cut off real inputs.
"""

from __future__ import annotations

import time

import networkx as nx
import numpy as np

from solvers.base import MilpProblem, SolveOptions, SolveStatus
from solvers.highs import HighsSolver
from verifier.bounds.interval import Bounds, interval_bounds
from verifier.deadline import OutOfTime, model_fits
from verifier.encode.network import encode_network
from verifier.network.graph import Network
from verifier.ops.affine import Affine

_EPS = np.finfo(np.float64).eps


def safe_lower_bound(problem: MilpProblem, c: np.ndarray, row_dual: np.ndarray) -> float:
    """A rigorous lower bound on min c@x over the LP's feasible set, from any row duals y.

    For feasible x: c@x = (c - A^T y)@x + y@(A x) >= min over the column box of (c - A^T y)@x
    + sum_r (y_r * row_lo_r if y_r > 0 else y_r * row_hi_r). Duals pointing at an infinite row
    side are zeroed, and float rounding is covered by an outward slack.
    """
    y = np.asarray(row_dual, dtype=np.float64).copy()
    y[(y > 0) & ~np.isfinite(problem.row_lo)] = 0.0
    y[(y < 0) & ~np.isfinite(problem.row_hi)] = 0.0
    d = c - problem.A.T @ y
    col = np.where(d > 0, d * problem.col_lo, np.where(d < 0, d * problem.col_hi, 0.0))
    row_lo = np.where(np.isfinite(problem.row_lo), problem.row_lo, 0.0)  # y is 0 where infinite
    row_hi = np.where(np.isfinite(problem.row_hi), problem.row_hi, 0.0)
    row = np.where(y > 0, y * row_lo, np.where(y < 0, y * row_hi, 0.0))
    if not (np.all(np.isfinite(col)) and np.all(np.isfinite(row))):
        return -np.inf
    # d = c - A^T y errs by <= gamma * (|c| + |A|^T |y|) per entry; sums err by gamma * sum|terms|.
    col_extent = np.maximum(np.abs(problem.col_lo), np.abs(problem.col_hi))
    magnitude = (np.abs(col).sum() + np.abs(row).sum()
                 + (np.abs(c) + problem.abs_AT @ np.abs(y)) @ col_extent)
    slack = (problem.num_rows + problem.num_cols + 8) * _EPS * magnitude
    return float(col.sum() + row.sum() - slack - 1e-12)


def certifies_infeasible(problem: MilpProblem, ray: np.ndarray | None) -> bool:
    """Whether row multipliers y (either sign) prove the LP infeasible: then the safe bound on
    min 0 @ x from y is above 0, which no feasible x allows (Farkas, with rounding covered by
    `safe_lower_bound`'s slack)."""
    if ray is None or ray.shape != (problem.num_rows,) or not np.all(np.isfinite(ray)) or not ray.any():
        return False
    zero = np.zeros(problem.num_cols)
    ray = ray / np.abs(ray).max()  # the bound scales with y but its absolute slack does not
    return any(safe_lower_bound(problem, zero, sign * ray) > 0 for sign in (1.0, -1.0))


def lp_min(solver: HighsSolver, problem: MilpProblem, c: np.ndarray, time_limit: float) -> float:
    """Safe lower bound on min c@x over the LP relaxation (-inf if the LP did not finish)."""
    solver.set_objective(c)
    res = solver.solve(SolveOptions(time_limit=time_limit, relax=True))
    if res.status != SolveStatus.OPTIMAL or res.row_dual is None:
        return -np.inf
    return safe_lower_bound(problem, c, res.row_dual)


def _exact_by_interval(net: Network, node: str) -> bool:
    """An affine map of the input box alone: its interval bounds are already exact."""
    op = net.op(node)
    return isinstance(op, Affine) and all(i == net.input_node for i in op.inputs)


def tighten_with_lp(net: Network, bounds: Bounds, deadline: float, stats: dict | None = None) -> Bounds:
    """Tighten the pre-activation bounds of every ReLU with LPs, layer by layer, until the
    deadline; what is not reached keeps its (sound) interval bounds."""
    known: Bounds = {n: b for n, b in bounds.items() if n != net.input_node}  # keep what we have
    lo, hi = bounds[net.input_node]
    n_lps = 0
    for relu in net.relu_nodes():
        pre = net.op(relu).inputs[0]
        bounds = interval_bounds(net, lo, hi, known)
        p_lo, p_hi = bounds[pre]
        ambiguous = np.flatnonzero((p_lo < 0) & (p_hi > 0))
        if ambiguous.size == 0 or _exact_by_interval(net, pre) or time.perf_counter() > deadline:
            continue
        ancestors = nx.ancestors(net.graph, pre)
        upto = [n for n in net.order if n in ancestors or n == pre]
        try:
            enc = encode_network(net, bounds, upto, deadline)
        except OutOfTime:
            break
        if not model_fits(deadline, enc.problem.A.nnz):
            break
        solver = HighsSolver(enc.problem, relax=True, primal_simplex=True)
        new_lo, new_hi = p_lo.copy(), p_hi.copy()
        for i in ambiguous:
            # Try the side closer to zero first: if it proves the neuron stable, skip the other.
            for side in (("max", "min") if p_hi[i] < -p_lo[i] else ("min", "max")):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                w = np.zeros(p_lo.size)
                w[i] = 1.0 if side == "min" else -1.0
                c, offset = enc.linear_objective(pre, w)
                value = lp_min(solver, enc.problem, c, remaining) + offset
                n_lps += 1
                if side == "min":
                    new_lo[i] = max(new_lo[i], value)
                else:
                    new_hi[i] = min(new_hi[i], -value)
                if new_hi[i] <= 0 or new_lo[i] >= 0:
                    break
        known[pre] = (new_lo, new_hi)
    if stats is not None:
        stats["lp_tightening_solves"] = stats.get("lp_tightening_solves", 0) + n_lps
    return interval_bounds(net, lo, hi, known)

