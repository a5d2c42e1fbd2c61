"""A MILP optimum that fails the float32 re-check: moving it just across the decision boundary.

The minimum distortion is reached on the boundary itself (a tie, which counts as adversarial in
float64), so whether onnxruntime's float32 pass agrees is up to rounding; a solver that writes
its solution with 8 digits (CBC through PuLP) adds its own rounding. Seen on tiny networks and
on WK17a: the MILP finished "optimal" with the right lower bound, its point came back with a
tiny positive slack (benchmarks/RESULTS.md, "Why the defaults are what they are"), and pushing
it outward along the perturbation (`Checker.settle`) did not help because its moved coordinates
sat on faces of the input set. The answer was then `unknown` with the attack's far worse upper
bound.

`confirm_near` tries, cheapest first and each point re-checked by `Checker.confirm`:
1. the point itself, and `settle`'s outward pushes;
2. steps along the steepest descent of the goal's slack per unit of the norm, from one-sided
   derivatives in the network's local linear pieces, moving only coordinates that can still
   move inside the input set (l0: only those already changed, so the count stays); the step is
   the linear estimate for a slack decrease from 2^-30 of the logits' scale, doubled until
   onnxruntime (and the float64 forward pass) agree.
It keeps the closest confirmed example. `tightened` is the last resort the direct search uses
with the time left: the same MILP asking for a margin (slack <= -delta), whose optimum is a
point strictly inside the target region (never a lower bound: the margin cuts points off).
"""

from __future__ import annotations

import time

import numpy as np

from solvers.base import MilpProblem
from verifier.distortion.examples import Checker, Example

_FIRST_DECREASE = 2.0 ** -30  # first slack decrease tried, relative to the logits' scale
_DOUBLINGS = 30  # ... doubled up to ~the logits' scale itself
_PROBE = 1e-7  # finite-difference step for the one-sided derivatives, relative to 1 + |x_i|
_CHUNK = 256  # probe points per forward pass: a CIFAR input has 6,145 of them
#: Margins asked of the MILP re-solve, relative to the logits' scale (1 + max |logit|).
MARGINS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)


def confirm_near(checker: Checker, x: np.ndarray, deadline: float = np.inf) -> Example | None:
    """The closest confirmed example among x, its outward pushes and its descent steps (the
    steps only while the deadline allows)."""
    if (ex := checker.confirm(x)) is not None:
        return ex
    found = [e for e in (checker.settle(x), step_across(checker, x, deadline=deadline)) if e is not None]
    return min(found, key=lambda e: e.distance, default=None)


def logit_scale(checker: Checker, x: np.ndarray) -> float:
    """1 + the largest |logit| at x: float32 rounding of the outputs is relative to it."""
    return 1.0 + float(np.abs(checker.net.forward(np.asarray(x, dtype=np.float64))).max())


def step_across(checker: Checker, x: np.ndarray, doublings: int = _DOUBLINGS,
                deadline: float = np.inf) -> Example | None:
    """A confirmed example a small step from x (in the box) along the steepest descent of the
    goal's slack, or None (no direction that helps, no step onnxruntime accepts, or no time)."""
    box = checker.box
    x = np.clip(np.asarray(x, dtype=np.float64), box.lo, box.hi)
    direction, rate = _descent(checker, x, deadline)
    if not rate < 0:
        return None
    scale = logit_scale(checker, x)
    for j in range(doublings):
        if time.perf_counter() > deadline:
            return None
        wanted = scale * _FIRST_DECREASE * 2.0 ** j  # slack decrease asked of the linear model
        trial = np.clip(x + (wanted / -rate) * direction, box.lo, box.hi)
        # Adversarial in float64 too: a step that float32 noise alone accepts could end below
        # the float64 minimum that the lower bound certifies.
        if (ex := checker.confirm(trial)) is not None and checker.adversarial(ex.x):
            return ex
    return None


def _descent(checker: Checker, x: np.ndarray, deadline: float = np.inf) -> tuple[np.ndarray, float]:
    """(direction, slack change per unit step along it): steepest descent of the goal's slack
    per unit of the norm, over the coordinates that can move inside the box (l1: the best one;
    linf: every helpful one by the same amount; l2: along the helpful derivatives; l0: like
    linf, over the coordinates already changed). The optimum sits on ReLU kinks, where the
    gradient of one side misleads (measured: it pointed to a coordinate whose move raised the
    slack), so the derivatives are one-sided finite differences, each in its own direction.
    At a kink only a combination of coordinates may help (the slack is locally a max of linear
    pieces): then no direction is found here, and the margin re-solve finds the way."""
    net, goal, box = checker.net, checker.goal, checker.box
    n = x.size
    h = _PROBE * (1.0 + np.abs(x))
    up, down = np.minimum(h, box.hi - x), np.minimum(h, x - box.lo)
    slack = np.empty(2 * n + 1)
    for first in range(0, 2 * n + 1, _CHUNK):  # probe rows built per chunk: no (2n+1) x n matrix
        if time.perf_counter() > deadline:
            return np.zeros(n), 0.0
        rows = np.arange(first, min(first + _CHUNK, 2 * n + 1))
        points = np.repeat(x[None, :], rows.size, axis=0)
        up_rows, down_rows = (rows >= 1) & (rows <= n), rows > n
        points[up_rows, rows[up_rows] - 1] += up[rows[up_rows] - 1]
        points[down_rows, rows[down_rows] - n - 1] -= down[rows[down_rows] - n - 1]
        slack[rows] = [goal.slack(row) for row in net.forward(points)]
    with np.errstate(divide="ignore", invalid="ignore"):
        d_up = np.where(up > 0, (slack[1:n + 1] - slack[0]) / up, np.inf)
        d_down = np.where(down > 0, (slack[n + 1:] - slack[0]) / down, np.inf)
    best = np.minimum(d_up, d_down)
    sign = np.where(d_up <= d_down, 1.0, -1.0)
    helpful = best < 0
    if checker.norm == "l0":
        helpful &= x.astype(np.float32) != checker.x0.astype(np.float32)
    direction = np.zeros(n)
    if not helpful.any():
        return direction, 0.0
    if checker.norm == "l1":
        i = int(np.argmin(np.where(helpful, best, np.inf)))
        direction[i] = sign[i]
        return direction, float(best[i])
    weight = -best[helpful] / np.linalg.norm(best[helpful]) if checker.norm == "l2" else 1.0
    direction[helpful] = sign[helpful] * weight
    step = _PROBE / max(float(np.abs(direction).max()), 1e-300)
    trial = np.clip(x + step * direction, box.lo, box.hi)  # the rate along the combined direction
    return direction, (goal.slack(net.forward(trial)) - slack[0]) / step


def tightened(problem: MilpProblem, goal_rows: np.ndarray, delta: float) -> MilpProblem:
    """The problem with each goal row asking for a margin: C_k y - d_k <= -delta (rows with a
    target binary: their vacuous side shrinks by delta too, which only drops points within
    delta of the row's maximum over the box). For upper bounds only: it cuts points off."""
    row_hi = problem.row_hi.copy()
    row_hi[goal_rows] -= delta
    return MilpProblem(problem.c, problem.A, problem.row_lo, row_hi, problem.col_lo, problem.col_hi,
                       problem.integer)
