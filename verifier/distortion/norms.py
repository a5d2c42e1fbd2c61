"""Distortion norms as MILP objectives over the input columns x (d = x - x0).

- linf: one column t >= |d_i| for all i; minimise t.
- l1:   u_i >= |d_i|; minimise sum u.
- l0:   a binary b_i with |d_i| <= width_i * b_i; minimise sum b (entries changed).
- l2:   HiGHS has no MIQP, so the squared distance is minimised over an outer approximation:
        s_i >= d_i^2 is replaced by tangent cuts s_i >= 2 p d_i - p^2 (below the parabola, so
        every cut is valid and the MILP's optimum is a lower bound on the true squared
        distance). Cuts are added at the solution's d_i until it is exact to a tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solvers.base import MilpProblem, SolveOptions, SolveStatus
from solvers.highs import HighsSolver
from verifier.encode.extend import extend, triplets
from verifier.errors import InputError

NORMS = ("linf", "l1", "l2", "l0")
_L2_START_TANGENTS = 4  # per side and coordinate, evenly spaced over the coordinate's range


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise InputError(f"norm {norm!r}: expected one of {', '.join(NORMS)}")
    return norm


def measure(norm: str, d: np.ndarray) -> float:
    """The distortion of a perturbation d in the given norm."""
    d = np.asarray(d, dtype=np.float64).ravel()
    if d.size == 0:
        return 0.0
    if norm == "linf":
        return float(np.abs(d).max())
    if norm == "l1":
        return float(np.abs(d).sum())
    if norm == "l2":
        return float(np.sqrt((d * d).sum()))
    return float(np.count_nonzero(d))


@dataclass
class NormEncoding:
    """A problem with the norm's columns and rows added, and the objective that measures it."""

    norm: str
    problem: MilpProblem
    cols: np.ndarray  # the norm's columns
    inputs: np.ndarray  # the input columns whose coordinates they measure
    x0: np.ndarray  # the centre, on those coordinates

    @property
    def objective(self) -> np.ndarray:
        c = np.zeros(self.problem.num_cols)
        c[self.cols] = 1.0
        return c

    def values(self, x: np.ndarray) -> np.ndarray:
        """The norm columns' values at input x: a feasible completion for a MIP start."""
        d = x[self.inputs] - self.x0
        if self.norm == "linf":
            return np.array([np.abs(d).max() if d.size else 0.0])
        if self.norm == "l1":
            return np.abs(d)
        if self.norm == "l2":
            return d * d
        return (d != 0).astype(float)

    def snap(self, x: np.ndarray) -> np.ndarray:
        """A MILP point with what its integer columns imply made exact: l0 coordinates whose
        binary is 0 put back on x0. A solver's point carries noise (CBC's is read back with 8
        digits): on WK17a an unchanged pixel at x0 = 0 came back as a tiny nonzero value, which
        float32 keeps, so the example counted one changed pixel more than the optimum
        (benchmarks/RESULTS.md, "Why the defaults are what they are")."""
        if self.norm != "l0":
            return x
        x = np.array(x, dtype=np.float64)
        kept = np.round(x[self.cols]) == 0
        x[self.inputs[kept]] = self.x0[kept]
        return x

    def distance_bound(self, objective_bound: float) -> float:
        """A lower bound on the distance from a lower bound on the objective."""
        if self.norm == "l2":
            return float(np.sqrt(max(objective_bound, 0.0)))
        if self.norm == "l0":
            return float(max(np.ceil(objective_bound - 1e-6), 0.0))
        return float(max(objective_bound, 0.0))

    def add_tangents(self, x: np.ndarray) -> int:
        """l2: cut off a solution whose s_i lie below d_i^2, with a tangent at each such d_i;
        returns the number of cuts added (0: the approximation is exact at x)."""
        if self.norm != "l2":
            return 0
        d = x[self.inputs] - self.x0
        where = np.flatnonzero(d * d - x[self.cols] > 1e-12 * (1.0 + d * d))
        if where.size:
            self.problem = _with_tangents(self.problem, self.cols[where], self.inputs[where],
                                          self.x0[where], d[where])
        return int(where.size)


    def nearest_in_pattern(self, x: np.ndarray, time_limit: float, threads: int = 1) -> np.ndarray | None:
        """l2: with every integer column fixed at its value in the MILP solution x (one
        activation pattern and target), the exact least-distance point, by HiGHS's convex QP.
        It is the upper-bound candidate, and a tangent there closes the outer approximation
        on that pattern (outer approximation in the sense of Duran and Grossmann)."""
        p = self.problem
        fixed = np.where(p.integer, np.round(x), np.nan)
        col_lo = np.where(p.integer, fixed, p.col_lo)
        col_hi = np.where(p.integer, fixed, p.col_hi)
        qp = MilpProblem(np.zeros(p.num_cols), p.A, p.row_lo, p.row_hi, col_lo, col_hi, np.zeros(p.num_cols, bool))
        solver = HighsSolver(qp, relax=True, threads=threads)
        c = np.zeros(p.num_cols)
        c[self.inputs] = -2.0 * self.x0
        solver.set_objective(c)
        diag = np.zeros(p.num_cols)
        diag[self.inputs] = 2.0
        solver.set_diagonal_hessian(diag)
        res = solver.solve(SolveOptions(time_limit=time_limit))
        return res.x if res.status == SolveStatus.OPTIMAL else None


def _with_tangents(p: MilpProblem, s_cols, x_cols, x0, points) -> MilpProblem:
    """Rows s - 2 p x >= -p^2 - 2 p x0 (the tangent of d^2 at d = p, with d = x - x0)."""
    m = points.size
    r = np.concatenate([np.arange(m), np.arange(m)])
    rows = triplets(m, p.num_cols, r, np.concatenate([s_cols, x_cols]),
                    np.concatenate([np.ones(m), -2.0 * points]))
    lo = -points * points - 2.0 * points * x0
    new, _ = extend(p, rows=rows, row_lo=lo, row_hi=np.full(m, np.inf))
    return new


def encode_norm(p: MilpProblem, inputs: np.ndarray, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                norm: str) -> NormEncoding:
    """Add the norm of x[inputs] - x0 (x within [lo, hi]) to the problem."""
    free = hi > lo  # fixed coordinates cannot move, so they need no columns
    inputs, x0, lo, hi = inputs[free], x0[free], lo[free], hi[free]
    m = inputs.size
    below, above = x0 - lo, hi - x0  # how far each coordinate can move down / up
    width = np.maximum(below, above)
    idx = np.arange(m)
    if norm == "linf":
        new, cols = extend(p, [0.0], [width.max() if m else 0.0], [False])
        t = np.full(m, cols[0])
        # x_i - t <= x0_i and x_i + t >= x0_i
        rows = triplets(2 * m, new.num_cols, np.r_[idx, idx, m + idx, m + idx],
                        np.r_[inputs, t, inputs, t], np.r_[np.ones(m), -np.ones(m), np.ones(m), np.ones(m)])
        new, _ = extend(new, rows=rows, row_lo=np.r_[np.full(m, -np.inf), x0], row_hi=np.r_[x0, np.full(m, np.inf)])
    elif norm in ("l1", "l0"):
        integer = norm == "l0"
        new, cols = extend(p, np.zeros(m), width if norm == "l1" else np.ones(m), np.full(m, integer))
        # l1: x_i - u_i <= x0_i, x_i + u_i >= x0_i;  l0: x_i - above_i b_i <= x0_i, x_i + below_i b_i >= x0_i
        up = -np.ones(m) if norm == "l1" else -above
        down = np.ones(m) if norm == "l1" else below
        rows = triplets(2 * m, new.num_cols, np.r_[idx, idx, m + idx, m + idx],
                        np.r_[inputs, cols, inputs, cols], np.r_[np.ones(m), up, np.ones(m), down])
        new, _ = extend(new, rows=rows, row_lo=np.r_[np.full(m, -np.inf), x0], row_hi=np.r_[x0, np.full(m, np.inf)])
    elif norm == "l2":
        new, cols = extend(p, np.zeros(m), width * width, np.zeros(m, bool))
        fractions = np.arange(1, _L2_START_TANGENTS + 1) / _L2_START_TANGENTS
        for f in fractions:
            for side in (above, -below):
                keep = side != 0
                new = _with_tangents(new, cols[keep], inputs[keep], x0[keep], f * side[keep])
    else:
        raise InputError(f"norm {norm!r}: expected one of {', '.join(NORMS)}")
    return NormEncoding(norm, new, cols, inputs, x0)
