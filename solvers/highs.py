"""HiGHS backend through highspy: the model goes in with one `passModel` call from CSC arrays.

Decisions are read from HiGHS's dual bound and model status, never from the word "Optimal"
alone: with a cutoff, "Infeasible" means no solution better than the cutoff exists.
"""

from __future__ import annotations

import time

import highspy
import numpy as np

from solvers.base import MilpProblem, SolveOptions, SolveResult, SolveStatus
from solvers.quiet import muted_native_output

_STATUS = {
    highspy.HighsModelStatus.kOptimal: SolveStatus.OPTIMAL,
    highspy.HighsModelStatus.kInfeasible: SolveStatus.INFEASIBLE,
    highspy.HighsModelStatus.kTimeLimit: SolveStatus.TIME_LIMIT,
    highspy.HighsModelStatus.kObjectiveTarget: SolveStatus.TARGET,
}


class HighsSolver:
    """One HiGHS instance holding one problem; objectives can be swapped between solves
    (warm-started: the previous basis is kept)."""

    def __init__(self, problem: MilpProblem, relax: bool = False, threads: int = 1,
                 primal_simplex: bool = False, presolve: bool = True) -> None:
        self.problem = problem
        self.relax = relax
        with muted_native_output():  # highspy >= 1.16 prints a banner from Highs() itself
            self.highs = highspy.Highs()
            self.highs.setOptionValue("output_flag", False)
        h = self.highs
        h.setOptionValue("threads", int(threads))
        h.setOptionValue("random_seed", 0)
        h.setOptionValue("mip_rel_gap", 1e-9)
        h.setOptionValue("mip_abs_gap", 1e-9)
        default = h.getOptionValue("mip_heuristic_effort")  # restored per solve; recent highspy gives (status, value)
        self._heuristic_effort = float(default[1] if isinstance(default, tuple) else default)
        if not presolve:
            h.setOptionValue("presolve", "off")
        if primal_simplex:
            # After an objective change the old basis stays primal feasible: primal simplex
            # re-optimises from it far faster than dual simplex does.
            h.setOptionValue("simplex_strategy", 4)
            h.setOptionValue("presolve", "off")
        lp = highspy.HighsLp()
        lp.num_col_ = problem.num_cols
        lp.num_row_ = problem.num_rows
        lp.col_cost_ = problem.c.astype(np.float64)
        lp.col_lower_ = problem.col_lo
        lp.col_upper_ = problem.col_hi
        lp.row_lower_ = problem.row_lo
        lp.row_upper_ = problem.row_hi
        A = problem.A.tocsc()
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = A.indptr.astype(np.int32)
        lp.a_matrix_.index_ = A.indices.astype(np.int32)
        lp.a_matrix_.value_ = A.data.astype(np.float64)
        if not relax and problem.integer.any():
            lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                               for i in problem.integer]
        h.passModel(lp)
        self._cost = problem.c.astype(np.float64).copy()
        self._integer = problem.integer.copy()

    def set_presolve(self, on: bool) -> None:
        """Presolve on or off for the next solves (a dual ray refers to the original rows only
        when the LP was solved without presolve)."""
        self.highs.setOptionValue("presolve", "on" if on else "off")

    def dual_ray(self) -> np.ndarray | None:
        """Row multipliers meant to prove the last LP infeasible (HiGHS' dual ray), or None.
        Callers must check them (`bounds.lp.certifies_infeasible`): HiGHS' word "infeasible"
        alone has been seen wrong (bab/leaf.py)."""
        status, has_ray, values = self.highs.getDualRay()
        if status != highspy.HighsStatus.kOk or not has_ray:
            return None
        return np.asarray(values, dtype=np.float64)

    def set_objective(self, c: np.ndarray) -> None:
        """Replace the objective; only changed coefficients are sent to HiGHS."""
        c = np.asarray(c, dtype=np.float64)
        changed = np.flatnonzero(c != self._cost)
        if changed.size:
            self.highs.changeColsCost(changed.size, changed.astype(np.int32), c[changed])
            self._cost = c.copy()

    @property
    def is_mip(self) -> bool:
        """Whether the next solve is a MIP (some column integer, not relaxed)."""
        return not self.relax and bool(self._integer.any())

    def set_integer(self, integer: np.ndarray) -> None:
        """Change which columns are integer (bool mask over the columns), e.g. to relax binaries
        that cannot change this objective's minimum; only changed columns are sent."""
        integer = np.asarray(integer, dtype=bool)
        changed = np.flatnonzero(integer != self._integer)
        if changed.size and not self.relax:
            kinds = np.where(integer[changed], int(highspy.HighsVarType.kInteger),
                             int(highspy.HighsVarType.kContinuous)).astype(np.uint8)
            self.highs.changeColsIntegrality(changed.size, changed.astype(np.int32), kinds)
            self._integer = integer.copy()

    def set_diagonal_hessian(self, diag: np.ndarray) -> None:
        """Add 0.5 * sum_i diag_i x_i^2 to the objective (a convex QP; continuous problems
        only, since HiGHS has no MIQP)."""
        diag = np.asarray(diag, dtype=np.float64)
        if not self.relax and self.problem.integer.any():
            raise ValueError("HiGHS solves no MIQP: a Hessian needs a continuous problem")
        where = np.flatnonzero(diag)
        hessian = highspy.HighsHessian()
        hessian.dim_ = self.problem.num_cols
        hessian.format_ = highspy.HessianFormat.kTriangular
        start = np.zeros(self.problem.num_cols + 1, dtype=np.int32)
        np.add.at(start, where + 1, 1)
        hessian.start_ = np.cumsum(start).astype(np.int32)
        hessian.index_ = where.astype(np.int32)
        hessian.value_ = diag[where]
        self.highs.passHessian(hessian)

    def solve(self, options: SolveOptions) -> SolveResult:
        h = self.highs
        h.setOptionValue("time_limit", max(float(options.time_limit), 1e-3))
        h.setOptionValue("objective_bound", float(options.cutoff))
        h.setOptionValue("objective_target", float(options.target))
        h.setOptionValue("mip_rel_gap", float(options.rel_gap))
        h.setOptionValue("mip_abs_gap", float(options.abs_gap))
        h.setOptionValue("mip_feasibility_tolerance", float(options.feasibility_tol))
        h.setOptionValue("mip_heuristic_effort", self._heuristic_effort if options.heuristic_effort is None
                         else float(options.heuristic_effort))
        if options.initial is not None and not self.relax:
            sol = highspy.HighsSolution()
            sol.col_value = list(map(float, options.initial))
            sol.value_valid = True
            h.setSolution(sol)
        start = time.perf_counter()
        h.run()
        elapsed = time.perf_counter() - start
        model_status = h.getModelStatus()
        status = _STATUS.get(model_status, SolveStatus.OTHER)
        info = h.getInfo()
        is_mip = self.is_mip
        x = None
        objective = np.inf
        if info.primal_solution_status == 2:  # feasible
            sol = h.getSolution()
            x = np.asarray(sol.col_value, dtype=np.float64)
            objective = float(info.objective_function_value)
        row_dual = None
        if is_mip:
            dual_bound = float(info.mip_dual_bound)
            nodes = int(info.mip_node_count)
        else:
            nodes = 0
            dual_bound = objective if status == SolveStatus.OPTIMAL else -np.inf
            if status == SolveStatus.OPTIMAL and info.dual_solution_status == 2:
                row_dual = np.asarray(h.getSolution().row_dual, dtype=np.float64)
        if status == SolveStatus.INFEASIBLE:
            dual_bound = np.inf if not np.isfinite(options.cutoff) else max(dual_bound, options.cutoff)
        elif np.isfinite(options.cutoff):
            # With a cutoff HiGHS may finish "optimal" at an incumbent above it, reporting that
            # incumbent as the bound: the search only proved that nothing lies below the cutoff.
            dual_bound = min(dual_bound, float(options.cutoff))
        return SolveResult(status, x, objective, dual_bound, row_dual, nodes, elapsed,
                           {"highs_status": h.modelStatusToString(model_status)})
