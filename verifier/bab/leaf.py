"""Exact bounds for a fully split domain: once every unstable ReLU is fixed to a side (except
last-layer ones that enter the objective convexly, which stay relaxed exactly), the minimum
over the domain is one LP over the input box.

The bound-propagation bound of such a domain equals the LP optimum only when its split
multipliers have converged; branch and bound cannot split further, so the LP decides it. The
LP's value is replaced by the dual-derived safe bound (`bounds.lp.safe_lower_bound`), and the
split constraints are loosened by a small margin so that solver tolerance cannot cut off real
inputs on the boundary z = 0.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from solvers.base import MilpProblem, SolveOptions, SolveStatus
from solvers.highs import HighsSolver
from verifier.bab.layered import Layered
from verifier.bounds.lp import certifies_infeasible, safe_lower_bound
from verifier.deadline import product_seconds

#: Split constraints z >= 0 / z <= 0 are loosened to z >= -LOOSEN / z <= LOOSEN.
LOOSEN = 1e-6


def leaf_seconds(net: Layered) -> float:
    """Expected seconds to build a leaf's LP: the dense products that write each layer as a
    map of the input (n_k x n_(k-1) x n_0 multiply-adds per layer), before HiGHS, whose own
    time is limited, starts. On a CNN's layers that is seconds, so a leaf is left unsolved
    rather than started when it would end past the deadline."""
    n0 = net.weights[0].shape[1]
    return product_seconds(n0 * sum(w.shape[0] * w.shape[1] for w in net.weights[:net.depth]))


def leaf_bound(net: Layered, rows: torch.Tensor, const: torch.Tensor, x_lo: torch.Tensor,
               x_hi: torch.Tensor, signs: list[torch.Tensor], lower: list[torch.Tensor],
               upper: list[torch.Tensor], time_limit: float) -> tuple[float, np.ndarray | None]:
    """(safe lower bound on min over the domain of max_r rows_r h + const_r, LP minimiser).

    `signs` are the domain's splits, `lower`/`upper` its clamped pre-activation bounds: a
    neuron with lower >= 0 is active, one with upper <= 0 inactive. Unsplit unstable neurons
    may remain only in the last hidden layer where every row weighs them >= 0
    (`branching.convex_last_layer`): they get a column y >= max(0, z), which is exact when
    minimising. Any other unstable neuron means the domain is no leaf: no bound (-inf).
    An infeasible domain gives +inf, but only with a Farkas certificate checked here: HiGHS
    once called such an LP infeasible although it held the real maximiser of a neuron, when
    the objective column's lower bound (then the domain's propagated bound) sat 5e-9 below
    the optimum. That column now gets a floor a unit below the box's interval bound instead.
    """
    n0 = x_lo.numel()
    r, c = rows.numpy(), const.numpy()
    m_mat, v = np.eye(n0), np.zeros(n0)  # current layer = m_mat @ x + v
    cons, cons_lo, cons_hi = [], [], []
    for k in range(net.depth):
        w, b = net.weights[k].numpy(), net.biases[k].numpy()
        z_mat, z_v = w @ m_mat, w @ v + b
        s = signs[k].numpy()
        for side, picked in ((-1, s < 0), (1, s > 0)):
            if picked.any():
                cons.append(z_mat[picked])
                bound = -z_v[picked]  # z_mat x + z_v >= -LOOSEN  <=>  z_mat x >= -z_v - LOOSEN
                cons_lo.append(bound - LOOSEN if side < 0 else np.full(bound.size, -np.inf))
                cons_hi.append(np.full(bound.size, np.inf) if side < 0 else bound + LOOSEN)
        lo_k, hi_k = lower[k].numpy(), upper[k].numpy()
        unstable = np.flatnonzero((lo_k < 0) & (hi_k > 0))
        if unstable.size and (k < net.depth - 1 or (r[:, unstable] < 0).any()):
            return -np.inf, None
        relaxed, y_hi = unstable, hi_k[unstable]
        z_relaxed, zv_relaxed = z_mat[relaxed], z_v[relaxed]
        active = (lo_k >= 0).astype(float)
        m_mat, v = active[:, None] * z_mat, active * z_v
    obj_mat, obj_v = r @ m_mat, r @ v + c  # (m, n0), (m,): the active neurons' part
    m, nr = obj_mat.shape[0], relaxed.size
    lo, hi = x_lo.numpy(), x_hi.numpy()
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    r_relaxed = r[:, relaxed]
    t_hi = float((obj_mat @ centre + np.abs(obj_mat) @ radius + r_relaxed @ y_hi + obj_v).max()) + 1.0
    # t >= every row's value, so >= row 0's interval minimum over the box: a floor far from the optimum.
    row0_lo = float(obj_mat[0] @ centre - np.abs(obj_mat[0]) @ radius + np.minimum(r_relaxed[0], 0) @ y_hi + obj_v[0])
    t_lo = row0_lo - 1.0 - 1e-6 * abs(row0_lo)
    # variables (x, y, t): min t  s.t.  splits on x;  y - z(x) >= 0;  obj_mat x + R y - t <= -obj_v
    zeros = lambda rows_: np.zeros((rows_, nr + 1))  # noqa: E731
    blocks = [np.hstack([mat, zeros(mat.shape[0])]) for mat in cons]
    blocks.append(np.hstack([-z_relaxed, np.eye(nr), np.zeros((nr, 1))]))
    blocks.append(np.hstack([obj_mat, r_relaxed, -np.ones((m, 1))]))
    row_lo = np.concatenate(cons_lo + [zv_relaxed, np.full(m, -np.inf)])
    row_hi = np.concatenate(cons_hi + [np.full(nr, np.inf), -obj_v])
    problem = MilpProblem(np.r_[np.zeros(n0 + nr), 1.0], sp.csc_matrix(np.vstack(blocks)), row_lo, row_hi,
                          np.r_[lo, np.zeros(nr), t_lo], np.r_[hi, y_hi, t_hi], np.zeros(n0 + nr + 1, bool))
    bound, x = checked_lp_bound(problem, time_limit)
    if not np.isfinite(bound):
        return bound, None
    magnitude = (np.abs(obj_v).max() + np.abs(obj_mat).sum(1).max() * np.maximum(np.abs(lo), np.abs(hi)).max()
                 + (np.abs(r_relaxed) @ y_hi).max(initial=0.0))
    return bound - 1e-9 * magnitude, x[:n0]


def checked_lp_bound(problem: MilpProblem, time_limit: float) -> tuple[float, np.ndarray | None]:
    """(safe lower bound on min problem.c @ x over the LP, its minimiser) for a leaf: the bound
    from the duals (bounds/lp.py); +inf only for an infeasibility whose Farkas ray is checked
    here (solved again without presolve, for the ray), -inf (no bound) for anything else."""
    solver = HighsSolver(problem, relax=True)
    options = SolveOptions(time_limit=time_limit, relax=True)
    res = solver.solve(options)
    if res.status == SolveStatus.INFEASIBLE:  # checked, not trusted
        solver.set_presolve(False)
        res = solver.solve(options)
        if res.status == SolveStatus.INFEASIBLE:
            return (np.inf, None) if certifies_infeasible(problem, solver.dual_ray()) else (-np.inf, None)
    if res.status != SolveStatus.OPTIMAL or res.row_dual is None:
        return -np.inf, None
    return safe_lower_bound(problem, problem.c, res.row_dual), res.x
