"""The direct search: one MILP minimising the distortion over adversarial inputs.

Columns: the network's encoding (bounds over the search box), a binary per target class when
there are several (the chosen target's conjunction must hold), and the norm's columns. The
search box is the input set, shrunk to the L-infinity ball of the best known distance when the
norm dominates L-infinity (linf, l1, l2: any better example lies inside it), which tightens
every neuron bound and so the big-M constants. The MIP's dual bound is the certified lower
bound, also when time runs out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from solvers import make_solver
from solvers.base import EXACT_FEASIBILITY, SolveOptions, SolveStatus
from verifier.bounds.interval import interval_bounds, output_rows_lower
from verifier.bounds.lp import tighten_with_lp
from verifier.bounds.symbolic import backward_lower, symbolic_bounds
from verifier.deadline import OutOfTime, model_fits
from verifier.distortion.boundary import MARGINS, confirm_near, logit_scale, tightened
from verifier.distortion.examples import Checker, Example, ball
from verifier.distortion.norms import NormEncoding, encode_norm
from verifier.encode.extend import extend, triplets
from verifier.encode.network import encode_network
from verifier.options import VerifyOptions

_DUAL_SLACK = 1e-8  # relative and absolute: the MIP's bound is exact only to its tolerances


@dataclass
class SearchOutcome:
    lower: float  # certified: no adversarial example closer than this
    best: Example | None
    infeasible: bool = False  # proven: no adversarial example in the whole input set
    stats: dict = field(default_factory=dict)


def _row_ranges(net, bounds, conj):
    """(lower, upper) of each row C_k y - d_k over the box: the tighter of interval and CROWN."""
    out = net.output_node
    lower = np.maximum(output_rows_lower(net, bounds, conj.C) - conj.d,
                       backward_lower(net, bounds, out, conj.C, -conj.d))
    upper = np.minimum(-output_rows_lower(net, bounds, -conj.C) - conj.d,
                       -backward_lower(net, bounds, out, -conj.C, conj.d))
    return lower, upper


def _goal_rows(enc, net, bounds, disjuncts):
    """The problem with "the output reaches one of the disjuncts" added; returns it, a function
    giving the added columns' values at a point (for a MIP start), and the indices of the goal's
    rows C_k y - d_k <= 0 (with a target binary: <= M_k (1 - z_k)), for `boundary.tightened`."""
    out = enc.handles[net.output_node]
    p = enc.problem
    expr = out.widened(p.num_cols)
    if len(disjuncts) == 1:
        conj = disjuncts[0]
        rows = sp.csr_matrix(conj.C) @ expr
        new, _ = extend(p, rows=rows, row_lo=np.full(conj.d.size, -np.inf), row_hi=conj.d - conj.C @ out.const)
        return new, lambda y: np.zeros(0), np.arange(p.num_rows, new.num_rows)
    new, z = extend(p, np.zeros(len(disjuncts)), np.ones(len(disjuncts)), True)
    blocks, hi_side = [], []
    for k, conj in enumerate(disjuncts):
        # C_k y - d_k <= M_k (1 - z_k): binding when z_k = 1, vacuous (M_k = row maximum) else
        big_m = np.maximum(_row_ranges(net, bounds, conj)[1], 0.0)
        m = conj.d.size
        blocks.append(triplets(m, new.num_cols, *_coo(sp.csr_matrix(conj.C) @ expr))
                      + triplets(m, new.num_cols, np.arange(m), np.full(m, z[k]), big_m))
        hi_side.append(conj.d - conj.C @ out.const + big_m)
    blocks.append(triplets(1, new.num_cols, np.zeros(z.size, int), z, np.ones(z.size)))  # sum z = 1
    hi = np.concatenate(hi_side + [[1.0]])
    lo = np.concatenate([np.full(hi.size - 1, -np.inf), [1.0]])
    first = new.num_rows
    new, _ = extend(new, rows=sp.vstack(blocks), row_lo=lo, row_hi=hi)

    def choice(y):
        slacks = [c.slack(y)[0] for c in disjuncts]
        return np.eye(len(disjuncts))[int(np.argmin(slacks))]
    return new, choice, np.arange(first, new.num_rows - 1)  # the last row is sum z = 1


def _coo(m):
    m = sp.coo_matrix(m)
    return m.row, m.col, m.data


def direct_search(checker: Checker, upper: Example | None, deadline: float, options: VerifyOptions,
                  rel_gap: float, abs_gap: float, known_lower: float = 0.0) -> SearchOutcome:
    """known_lower: a distance already proven (by bisection, or a verdict): the lower bound
    starts there. It is not put into the MILP as a floor on the objective column: a floor a few
    per cent below the optimum stalled HiGHS at its root (WK17a image 149: 0 nodes in 60 s with
    the floor at 0.042, 15 s without; benchmarks/RESULTS.md)."""
    net, x0, norm = checker.net, checker.x0, checker.norm
    stats: dict = {"strategy": "direct"}
    shrunk = upper is not None and norm != "l0"
    box = ball(checker.box, x0, upper.distance) if shrunk else checker.box
    bounds = symbolic_bounds(net, interval_bounds(net, box.lo, box.hi), deadline)
    disjuncts = [c for c in checker.goal.disjuncts if _row_ranges(net, bounds, c)[0].max() <= 0]
    if not disjuncts:  # no target class is reachable anywhere in the box
        if shrunk:  # contradicts the confirmed example: numerics, prove nothing
            return SearchOutcome(0.0, upper, stats=stats)
        return SearchOutcome(np.inf, None, infeasible=True, stats=stats)
    if options.lp_tightening:
        t = time.perf_counter()
        bounds = tighten_with_lp(net, bounds, t + options.lp_budget * (deadline - t), stats)
        stats["time_lp_tightening"] = round(time.perf_counter() - t, 4)
    try:
        enc = encode_network(net, bounds, deadline=deadline)
    except OutOfTime:  # no model to solve: what is known stands (deadline.py)
        return SearchOutcome(known_lower if upper is None else min(known_lower, upper.distance), upper, stats=stats)
    problem, choice, goal_rows = _goal_rows(enc, net, bounds, disjuncts)
    coded = encode_norm(problem, enc.input_cols, x0[enc.input_cols], box.lo, box.hi, norm)
    stats.update(binaries=int(coded.problem.integer.sum()), mip_nodes=0, mip_solves=0)
    lower, best = known_lower, upper
    start_x = upper.x if upper is not None else None
    while True:
        left = deadline - time.perf_counter()
        if left <= 0 or not model_fits(deadline, coded.problem.A.nnz):
            break
        res = _solve(coded, enc, net, choice, start_x, left, options, rel_gap, abs_gap)
        stats["mip_nodes"] += res.nodes
        stats["mip_solves"] += 1
        stats["mip_status"] = res.status.value
        if res.status == SolveStatus.INFEASIBLE and not shrunk:
            return SearchOutcome(np.inf, None, infeasible=True, stats=stats)
        if res.status in (SolveStatus.OPTIMAL, SolveStatus.TIME_LIMIT) and np.isfinite(res.dual_bound):
            bound = res.dual_bound - _DUAL_SLACK * (1.0 + abs(res.dual_bound))
            lower = max(lower, coded.distance_bound(bound))
        candidates = _candidates(coded, res, deadline, options)
        best = _best_of(checker, enc, box, candidates, best, deadline)
        start_x = best.x if best is not None else None
        if gap_closed(best, lower, rel_gap, abs_gap):
            break
        if res.status != SolveStatus.OPTIMAL or res.x is None:
            break
        cuts = sum(coded.add_tangents(point) for point in candidates)
        stats["l2_cuts"] = stats.get("l2_cuts", 0) + cuts
        if cuts == 0:
            best = _with_margin(checker, box, coded, goal_rows, enc, choice, best, lower, deadline, options,
                                rel_gap, abs_gap, stats)
            break
    if best is not None:
        lower = min(lower, best.distance)
    return SearchOutcome(lower, best, stats=stats)


def gap_closed(best: Example | None, lower: float, rel_gap: float, abs_gap: float) -> bool:
    """Whether the best example's distance is within the gap of the certified lower bound."""
    return best is not None and best.distance - lower <= abs_gap + rel_gap * best.distance


def _candidates(coded: NormEncoding, res, deadline: float, options: VerifyOptions) -> list[np.ndarray]:
    """The MILP's point, and for l2 the exact least-distance point of its pattern."""
    candidates = [] if res.x is None else [coded.snap(res.x)]
    if res.x is not None and coded.norm == "l2" and deadline > time.perf_counter():
        exact = coded.nearest_in_pattern(res.x, deadline - time.perf_counter(), options.threads)
        if exact is not None:
            exact[coded.cols] = 0.0  # so that add_tangents cuts at every moved coordinate
            candidates.append(exact)
    return candidates


def _best_of(checker: Checker, enc, box, candidates: list[np.ndarray], best: Example | None,
             deadline: float = np.inf) -> Example | None:
    """The closest confirmed example among best and the candidates (each moved across the
    decision boundary if it sits on the wrong side in float32: `boundary.confirm_near`)."""
    for point in candidates:
        ex = confirm_near(checker, np.clip(point[enc.input_cols], box.lo, box.hi), deadline)
        if ex is not None and (best is None or ex.distance < best.distance):
            best = ex
    return best


def _with_margin(checker: Checker, box, coded: NormEncoding, goal_rows, enc, choice, best: Example | None,
                 lower: float, deadline: float, options: VerifyOptions, rel_gap: float, abs_gap: float,
                 stats: dict) -> Example | None:
    """The MILP finished, yet no confirmed example lies within the gap of its bound: the
    optimum's point sits on the boundary on float32's wrong side and no small step crossed.
    Re-solve, with the time left, asking for a margin (boundary.MARGINS, relative to the
    logits' scale) and at the exact feasibility tolerance (a row slack of 1e-6 would eat the
    margin); its points are examples strictly inside the target region. `lower` stays the
    first MILP's: the margin cuts points off, so these solves bound nothing from below."""
    scale = logit_scale(checker, checker.x0)
    for margin in MARGINS:
        left = deadline - time.perf_counter()
        if left <= 0 or gap_closed(best, lower, rel_gap, abs_gap) or not model_fits(deadline,
                                                                                coded.problem.A.nnz):
            break
        tight = replace(coded, problem=tightened(coded.problem, goal_rows, margin * scale))
        start_x = best.x if best is not None else None
        res = _solve(tight, enc, checker.net, choice, start_x, left, options, rel_gap, abs_gap,
                     feasibility_tol=EXACT_FEASIBILITY)
        stats["margin_solves"] = stats.get("margin_solves", 0) + 1
        stats["margin_status"] = res.status.value
        if res.status == SolveStatus.INFEASIBLE:  # a larger margin is infeasible too
            break
        best = _best_of(checker, enc, box, _candidates(tight, res, deadline, options), best, deadline)
    return best


def _solve(coded: NormEncoding, enc, net, choice, start_x, time_limit: float, options: VerifyOptions,
           rel_gap: float, abs_gap: float, feasibility_tol: float = SolveOptions.feasibility_tol):
    # options.solver runs this MILP; the L2 projection QP (norms.py) and LP tightening stay on HiGHS.
    solver = make_solver(options.solver, coded.problem, threads=options.threads, presolve=options.mip_presolve)
    solver.set_objective(coded.objective)
    # The MIP may stop at a fraction of the requested gap (the example re-check then adds a little).
    solve = SolveOptions(time_limit=time_limit, rel_gap=rel_gap / 4, abs_gap=abs_gap / 4,
                         feasibility_tol=feasibility_tol)
    if start_x is not None:
        y = net.forward(start_x.reshape(1, -1))
        base = enc.assignment(net, start_x)
        initial = np.concatenate([base, choice(np.atleast_2d(y)[0]), coded.values(start_x)])
        if initial.size == coded.problem.num_cols:
            solve.initial = np.clip(initial, coded.problem.col_lo, coded.problem.col_hi)
    return solver.solve(solve)
