"""Deciding one input region of a property: the stages from cheap to exact.

reference point -> interval bounds -> CROWN (plan.first_walk: sparse numpy on a CPU, the bound
graph's walk on a GPU) -> PGD attack -> alpha-CROWN -> LP bounds -> branch and bound stages
(bab_stages.py: probe, refined layer bounds, search) on the dense chain engine for MLPs
(chain_stage.py) or the bound engine's graph (graph_stage.py); without branch and bound, LP
tightening and a MIP over the disjuncts still open. Each disjunct d has a slack s_d (<= 0 means
violated); the run keeps a proven lower bound per disjunct and the best point found. `robust`
only comes from lower bounds above the tolerance (bound propagation, a branch and bound with
every domain closed, safe LP duals, or a finished MIP); `adversarial` only from a point that
onnxruntime confirms; everything else is `unknown` with the bounds reached.
"""

from __future__ import annotations

import time

import numpy as np

from solvers import make_solver
from solvers.base import EXACT_FEASIBILITY, SolveOptions, SolveStatus
from solvers.highs import HighsSolver
from verifier.bounds.interval import interval_bounds, output_rows_lower
from verifier.bounds.lp import lp_min, safe_lower_bound, tighten_with_lp
from verifier.bounds.symbolic import backward_lower, symbolic_bounds
from verifier.deadline import OutOfTime, check_model
from verifier.encode.network import EncodedNetwork, encode_network
from verifier.network.graph import Network
from verifier.options import VerifyOptions
from verifier.result import Result, Status
from verifier.search import chain_stage, graph_stage
from verifier.search.attack import pgd_attack
from verifier.search.bab_stages import bab_stages
from verifier.search.input_stage import free_inputs, input_search
from verifier.search.plan import engines_to_try, first_walk, make_plan
from verifier.search.run_state import RunState
from verifier.spec.property import Conjunction, InputRegion
from verifier.threads import run_threads


def _stack(disjuncts: list[Conjunction]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.vstack([c.C for c in disjuncts])
    offsets = np.concatenate([c.d for c in disjuncts])
    owner = np.concatenate([np.full(c.d.size, i) for i, c in enumerate(disjuncts)])
    return rows, offsets, owner


def _per_disjunct(values: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    """Lower bound on each disjunct's slack: the max of its rows' lower bounds."""
    out = np.full(count, -np.inf)
    np.maximum.at(out, owner, values)
    return out


def _row_ranges(net: Network, bounds: dict, conj: Conjunction) -> tuple[np.ndarray, np.ndarray]:
    """Interval (lower, upper) of each row's C_k @ y - d_k over the input set."""
    lower = output_rows_lower(net, bounds, conj.C) - conj.d
    upper = -output_rows_lower(net, bounds, -conj.C) - conj.d
    return lower, upper


def _relu_stats(net: Network, bounds: dict, prefix: str) -> dict:
    total = unstable = 0
    for relu in net.relu_nodes():
        lo, hi = bounds[net.op(relu).inputs[0]]
        total += lo.size
        unstable += int(((lo < 0) & (hi > 0)).sum())
    return {"relus": total, f"unstable_{prefix}": unstable}


def check_region(net: Network, region: InputRegion, x_ref: np.ndarray, options: VerifyOptions,
                 label: int | None = None) -> Result:
    """Decide whether some input of region.box satisfies one of region.disjuncts.
    x_ref is a point of the box tried first (the sample itself for robustness)."""
    start = time.perf_counter()
    n = len(region.disjuncts)
    run = RunState(net, region, label, options, start, np.full(n, -np.inf), x_ref.copy())
    try:
        with run_threads(options.threads):
            return _decide(run, x_ref)
    except OutOfTime:  # a stage that had nothing partial to give back (deadline.py)
        if run.best_value <= 0 and (evidence := run.confirm(run.best_x)) is not None:
            return run.result(Status.ADVERSARIAL, "attack", evidence)  # a violation seen on the way
        return run.result(Status.UNKNOWN, "timeout")


def _engine(run: RunState) -> tuple:
    """(kind, stage module, what it runs on, split depth) of the first engine in the plan's
    order (plan.engines_to_try) that takes the network; ("none", None, None, 0) if none."""
    for kind in engines_to_try(run.options):
        if kind == "chain" and (layered := chain_stage.chain_of(run)) is not None:
            return kind, chain_stage, layered, layered.depth
        if kind == "graph":
            graph = graph_stage.graph_of(run)
            return kind, graph_stage, graph, len(graph.splits)
    return "none", None, None, 0


def _decide(run: RunState, x_ref: np.ndarray) -> Result:
    """The stages of `check_region`, cheap to exact; each keeps to run.deadline."""
    net, region, options, start = run.net, run.region, run.options, run.start
    n = len(region.disjuncts)
    run.stats["prediction"] = int(np.argmax(net.forward(x_ref)))
    if run.offer(x_ref) <= 0 and not options.exact and (evidence := run.confirm(x_ref)) is not None:
        return run.result(Status.ADVERSARIAL, "clean", evidence)

    rows, offsets, owner = _stack(region.disjuncts)
    box = region.box
    bounds = interval_bounds(net, box.lo, box.hi)
    run.stats.update(_relu_stats(net, bounds, "interval"))
    run.lower = _per_disjunct(output_rows_lower(net, bounds, rows) - offsets, owner, n)
    if options.symbolic:
        if first_walk(options) == "graph":
            bounds, crown = graph_stage.crown(run, bounds, rows, offsets)
        else:
            bounds = symbolic_bounds(net, bounds, run.deadline)
            crown = backward_lower(net, bounds, net.output_node, rows, -offsets)
        run.lower = np.maximum(run.lower, _per_disjunct(crown, owner, n))
        run.stats.update(_relu_stats(net, bounds, "symbolic"))
    run.stats["time_bounds"] = round(time.perf_counter() - start, 4)
    if not run.open():
        return run.result(Status.ROBUST, "bounds")

    attack = pgd_attack(net, box, x_ref, [region.disjuncts[d] for d in run.open()],
                        options.attack_restarts, options.attack_steps, options.seed, run.deadline)
    run.offer(attack.x)
    if attack.value <= 0 and not options.exact and (evidence := run.confirm(attack.x)) is not None:
        return run.result(Status.ADVERSARIAL, "attack", evidence)
    attacked = dict(zip(run.open(), attack.per_disjunct))
    order = sorted(run.open(), key=lambda d: attacked[d])

    kind, engine, target, depth = _engine(run)
    run.plan = plan = make_plan(options, kind, depth, free_inputs(run))
    run.stats["engine"] = plan.engine
    if plan.input_split:
        run.stats["split"] = "input"
        return input_search(run, plan.input_settings)
    state = None  # the engine's bounds state, once alpha-CROWN made it
    if plan.alpha_crown and run.open():
        began = time.perf_counter()
        bounds, state = engine.alpha_crown(run, target, bounds, options.alpha_budget * run.remaining())
        run.stats.update(_relu_stats(net, bounds, "alpha"))
        run.note("alpha-CROWN", began)
        if not run.open():
            return run.result(Status.ROBUST, "bounds")
    enc = None  # the encoding of `bounds`, once made
    if plan.lp_bounds:
        enc = encode_network(net, bounds, deadline=run.deadline)
        _lp_bounds(run, enc, bounds, [d for d in order if d in run.open()])
    if not run.open():
        return run.result(Status.ROBUST, "lp")
    if plan.bab and state is not None:
        small = (plan.engine == "graph" and options.mip_stage_relus > 0
                 and run.stats.get("unstable_alpha", np.inf) <= options.mip_stage_relus)
        return bab_stages(run, engine, state, order, _mip_stage(run, bounds, order) if small else None)
    if enc is None:
        enc = encode_network(net, bounds, deadline=run.deadline)
    if run.open() and options.lp_tightening and run.remaining() > 0:
        encoded = enc
        bounds, enc = _tightened(run, bounds, enc, time.perf_counter() + options.lp_budget * run.remaining())
        if enc is not encoded:  # else the bounds, and so the LPs, are as before
            _lp_bounds(run, enc, bounds, run.open())
    if not run.open():
        return run.result(Status.ROBUST, "lp")
    return _mip_search(run, enc, bounds, [d for d in order if d in run.open()], attack.x)


def _tightened(run: RunState, bounds: dict, enc: EncodedNetwork, end: float) -> tuple[dict, EncodedNetwork]:
    """The layer bounds tightened by LPs until `end`, and their encoding: `enc` (the encoding of
    `bounds`) itself where no LP ran, since the bounds are then as before."""
    began = time.perf_counter()
    solves = run.stats.get("lp_tightening_solves", 0)
    bounds = tighten_with_lp(run.net, bounds, end, run.stats)
    run.stats.update(_relu_stats(run.net, bounds, "lp"))
    run.stats["time_lp_tightening"] = round(time.perf_counter() - began, 4)
    if run.stats.get("lp_tightening_solves", 0) > solves:
        enc = encode_network(run.net, bounds, deadline=run.deadline)
    return bounds, enc


#: The MIP stage's limits on the network's encoding: seconds to make it, and its size.
MIP_STAGE_ENCODE_SECONDS = 2.0
MIP_STAGE_NONZEROS = 1_000_000


def _mip_stage(run: RunState, bounds: dict, order: list[int]):
    """The exact stage for a small network's search (bab_stages): within its budget, the layer
    bounds tightened by LPs and the MIP over the open disjuncts under a cutoff, which proves
    oval21 instances that branch and bound leaves open (benchmarks/RESULTS.md). Returns the
    decision, or None (undecided: the searches go on with what it proved)."""

    def stage(budget: float) -> Result | None:
        began = time.perf_counter()
        result = None
        with run.capped(began + budget):
            try:
                # A residual CNN's encoding fills in to millions of nonzeros: no MIP there.
                with run.capped(began + MIP_STAGE_ENCODE_SECONDS):
                    enc = encode_network(run.net, bounds, deadline=run.deadline)
                if enc.problem.A.nnz > MIP_STAGE_NONZEROS:
                    run.stats["mip_stage_nonzeros"] = enc.problem.A.nnz
                    raise OutOfTime
                tight, enc = _tightened(run, bounds, enc, began + run.options.lp_budget * budget)
                # one MIP per disjunct: the joint MIP over many disjuncts may not leave its root
                # (benchmarks/RESULTS.md); no primal heuristics: the attacks and the probe search
                # ran, what is left is mostly a proof
                result = _mip_search(run, enc, tight, [d for d in order if d in run.open()], run.best_x, "split",
                                     heuristic_effort=0.0)
            except OutOfTime:
                pass
        run.stats["time_mip_stage"] = round(time.perf_counter() - began, 4)
        run.note("MIP", began)
        return result if result is not None and result.status != Status.UNKNOWN else None

    return stage


class _Objectives:
    """The LP/MIP of one disjunct: single-row disjuncts share the network's model (only the
    objective changes); a multi-row one gets its own with t >= C_k y - d_k, minimising t."""

    def __init__(self, run: RunState, enc: EncodedNetwork, bounds: dict, relax: bool) -> None:
        self.run, self.enc, self.bounds, self.relax = run, enc, bounds, relax
        self.shared = None

    def solver_for(self, d: int):
        conj = self.run.disjuncts[d]
        enc, out = self.enc, self.run.net.output_node
        if conj.d.size == 1:
            if self.shared is None:
                self.shared = self._solver(enc.problem)
            c, offset = enc.linear_objective(out, conj.C[0])
            return self.shared, enc.problem, c, offset - conj.d[0], None
        lo_rows, hi_rows = _row_ranges(self.run.net, self.bounds, conj)
        problem = enc.with_max_objective(out, conj.C, conj.d, lo_rows.max(), hi_rows.max())
        c = np.zeros(problem.num_cols)
        c[-1] = 1.0
        return self._solver(problem), problem, c, 0.0, conj

    def _solver(self, problem):
        check_model(self.run.deadline, problem.A.nnz)
        opts = self.run.options
        if self.relax:  # LP bounds stay on native HiGHS (warm-started, safe duals): only MIPs use options.solver
            return HighsSolver(problem, relax=True, threads=opts.threads, primal_simplex=True, presolve=True)
        return make_solver(opts.solver, problem, threads=opts.threads, presolve=opts.mip_presolve)


def _lp_bounds(run: RunState, enc: EncodedNetwork, bounds: dict, disjuncts: list[int]) -> None:
    start = time.perf_counter()
    objectives = _Objectives(run, enc, bounds, relax=True)
    for d in disjuncts:
        if run.remaining() <= 0:
            break
        solver, problem, c, offset, _ = objectives.solver_for(d)
        run.prove(d, lp_min(solver, problem, c, run.remaining()) + offset)
    run.stats["time_lp_bounds"] = round(run.stats.get("time_lp_bounds", 0) + time.perf_counter() - start, 4)


def _mip_search(run: RunState, enc: EncodedNetwork, bounds: dict, disjuncts: list[int],
                seed_x: np.ndarray, disjunctions: str | None = None, heuristic_effort: float | None = None) -> Result:
    """The exact search over the open disjuncts: one MIP each ("split", most threatening first)
    or one MIP choosing among them ("joint"; default: options.disjunctions); stop at the first
    confirmed violation. `heuristic_effort`: the solver's primal heuristics (SolveOptions)."""
    run.stats["binaries"] = enc.num_binaries
    run.stats["mip_nodes"] = 0
    if (disjunctions or run.options.disjunctions) == "joint" and len(disjuncts) > 1:
        evidence = _joint_mip(run, enc, bounds, disjuncts, seed_x, heuristic_effort)
    else:
        evidence = _split_mips(run, enc, bounds, disjuncts, seed_x, heuristic_effort)
    if evidence is None and run.options.exact and run.best_value <= 0:
        evidence = run.confirm(run.best_x)
    if evidence is not None:
        return run.result(Status.ADVERSARIAL, "mip", evidence)
    if run.lower.min() > run.options.tolerance:
        return run.result(Status.ROBUST, "mip")
    return run.result(Status.UNKNOWN, "timeout" if run.remaining() <= 0 else "numerics")


def _solve(run: RunState, solver, problem, c, offset: float, initial: np.ndarray, time_limit: float,
           heuristic_effort: float | None = None):
    """One MIP solve with the early stops: cutoff (nothing below the tolerance) and target (an
    incumbent at or below 0). Returns the result and whether it finished (a proof)."""
    solver.set_objective(c)
    solve = SolveOptions(time_limit=time_limit, initial=np.clip(initial, problem.col_lo, problem.col_hi),
                         heuristic_effort=heuristic_effort)
    if not run.options.exact:
        solve.cutoff, solve.target = 2 * run.options.tolerance - offset, -offset
    else:  # the optimum is reported as exact: no room for the solver's default row slack
        solve.feasibility_tol = EXACT_FEASIBILITY
    res = solver.solve(solve)
    run.stats["mip_nodes"] += res.nodes
    # "Infeasible" finishes a search only under a cutoff (nothing below it); without one the
    # encoding of a non-empty box always has points, so the word is a solver failure.
    return res, res.status == SolveStatus.OPTIMAL or (res.status == SolveStatus.INFEASIBLE
                                                      and np.isfinite(solve.cutoff))


def _incumbent(run: RunState, enc: EncodedNetwork, res, d: int):
    """Evidence from a MIP incumbent, after onnxruntime's (and if needed PGD's) say."""
    if res.x is None:
        return None
    x_in = np.clip(res.x[enc.input_cols], run.region.box.lo, run.region.box.hi)
    if run.offer(x_in) <= 0 and not run.options.exact:
        return run.confirm(x_in) or _polish(run, x_in, d)
    return None


def _split_mips(run: RunState, enc: EncodedNetwork, bounds: dict, disjuncts: list[int], seed_x: np.ndarray,
                heuristic_effort: float | None = None):
    objectives = _Objectives(run, enc, bounds, relax=False)
    seed = enc.assignment(run.net, seed_x)
    unresolved = list(disjuncts)
    for attempt in range(2):  # a fair slice per disjunct first, then all the time left
        for d in list(unresolved):
            left = run.remaining()
            if left <= 0:
                return None
            solver, problem, c, offset, conj = objectives.solver_for(d)
            if run.options.convex_relus:
                rows = c if conj is None else problem.A.tocsr()[-conj.d.size:]
                solver.set_integer(problem.integer & ~enc.convex_binaries(run.net, rows))
            initial = seed if conj is None else np.append(seed, conj.slack(run.net.forward(seed_x))[0])
            res, finished = _solve(run, solver, problem, c, offset, initial,
                                   left / len(unresolved) if attempt == 0 else left, heuristic_effort)
            bound = res.dual_bound
            if not solver.is_mip:  # every binary relaxed: an LP, which proves only by its safe duals
                finished = res.status == SolveStatus.OPTIMAL and res.row_dual is not None
                bound = safe_lower_bound(problem, c, res.row_dual) if finished else -np.inf
            if finished:  # only a finished solve's dual bound counts as a proof (rule 1)
                run.prove(d, bound + offset)
            if (evidence := _incumbent(run, enc, res, d)) is not None:
                return evidence
            if finished and (run.lower[d] > run.options.tolerance or run.options.exact):
                unresolved.remove(d)
        if not unresolved:
            return None
    return None


def _joint_mip(run: RunState, enc: EncodedNetwork, bounds: dict, disjuncts: list[int], seed_x: np.ndarray,
               heuristic_effort: float | None = None):
    net = run.net
    conjs = [run.disjuncts[d] for d in disjuncts]
    row_bounds = [_row_ranges(net, bounds, c) for c in conjs]
    problem = enc.with_disjunction(net.output_node, conjs, row_bounds)
    c = np.zeros(problem.num_cols)
    c[-1] = 1.0
    check_model(run.deadline, problem.A.nnz)
    solver = make_solver(run.options.solver, problem, threads=run.options.threads, presolve=run.options.mip_presolve)
    slacks = np.array([conj.slack(net.forward(seed_x))[0] for conj in conjs])
    choice = np.eye(len(conjs))[int(np.argmin(slacks))]
    initial = np.concatenate([enc.assignment(net, seed_x), choice, [slacks.min()]])
    res, finished = _solve(run, solver, problem, c, 0.0, initial, run.remaining(), heuristic_effort)
    if finished:
        for d in disjuncts:
            run.prove(d, res.dual_bound)
    chosen = disjuncts[int(np.argmax(res.x[enc.problem.num_cols:-1]))] if res.x is not None else disjuncts[0]
    return _incumbent(run, enc, res, chosen)


def _polish(run: RunState, x: np.ndarray, d: int):
    """A MIP point at slack ~0 may not survive float32: push it further with a short PGD."""
    attack = pgd_attack(run.net, run.region.box, x, [run.disjuncts[d]], restarts=1, steps=20,
                        seed=run.options.seed, deadline=run.deadline)
    return run.confirm(attack.x) if attack.value <= 0 else None
