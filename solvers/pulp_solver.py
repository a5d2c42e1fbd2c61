"""PuLP backend: the same `MilpProblem`, solved by any solver PuLP drives (CBC is bundled with
PuLP; Gurobi, CPLEX, GLPK, SCIP, Xpress, COPT, MOSEK and HiGHS when installed).

Why it exists: a second, independent solver to cross-check HiGHS on the same MILPs (the design's
test oracle), and a way to use a solver the user has a licence for. It is not on the hot path:
PuLP builds Python objects per row and the command-line solvers go through files, so expect it
to be slower than the native HiGHS backend.

What a result may claim (soundness first: `dual_bound` must be proven by the solver):

* OPTIMAL only when PuLP reports the model status *and* the solution status optimal. A CBC run
  stopped by its time limit with an incumbent reads "Optimal" / "integer feasible" in PuLP: that
  is TIME_LIMIT (or OTHER), never OPTIMAL.
* dual_bound: the solver's own proven bound where PuLP keeps the solver object (HiGHS through
  PuLP: `mip_dual_bound`; Gurobi: `ObjBound`). Otherwise PuLP exposes no bound, and only a
  finished optimal solve proves anything: its objective minus everything "optimal" may hide
  (the allowed absolute and relative gaps, CBC's cutoff increment, and the rounding of CBC's
  8-significant-digit solution file); any other finish gives -inf.
* INFEASIBLE only when PuLP says infeasible and every column is bounded (several solvers report
  "infeasible or unbounded" as infeasible; with bounded columns unbounded is impossible).
* cutoff: passed to CBC (`-cutoff`: "all solutions must be better than this") and to HiGHS, so
  "infeasible" then means "nothing below the cutoff", as with the native backend. Other
  backends ignore it, which is sound: the solve just runs on to optimality.
* target (stop at the first incumbent this good): only HiGHS through PuLP; CBC has no such
  stop and runs on to optimality (its incumbent is still returned).
* LP duals (`row_dual`, for safe bounds): PuLP's constraint `pi`, summed over the two halves of
  a two-sided row; same sign as HiGHS (positive when the lower side binds in a minimisation).
* Command-line solvers write the model and solution files into a private temporary folder that
  is removed after each solve (never the working directory).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import shutil
import tempfile
import time
import warnings

import numpy as np

from solvers.base import MilpProblem, SolveOptions, SolveResult, SolveStatus
from solvers.quiet import muted_native_output

#: User-facing backend name -> PuLP solvers to try, in order (Python API before command line).
BACKENDS: dict[str, tuple[str, ...]] = {
    "cbc": ("PULP_CBC_CMD", "COIN_CMD"),
    "gurobi": ("GUROBI", "GUROBI_CMD"),
    "cplex": ("CPLEX_PY", "CPLEX_CMD"),
    "glpk": ("PYGLPK", "GLPK_CMD"),
    "scip": ("SCIP_PY", "SCIP_CMD"),
    "xpress": ("XPRESS_PY", "XPRESS"),
    "copt": ("COPT", "COPT_DLL", "COPT_CMD"),
    "mosek": ("MOSEK",),
    "pulp-highs": ("HiGHS", "HiGHS_CMD"),
}
_CBC = ("PULP_CBC_CMD", "COIN_CMD")
#: PuLP interfaces whose "optimal" really means a finished solve: their status mapping keeps a
#: stop at a limit apart. Others (GLPK, SCIP_CMD, GUROBI_CMD, COPT, MOSEK) report a time-limited
#: incumbent as optimal, so from them an incumbent is only an incumbent, never a proof.
_TRUSTS_OPTIMAL = frozenset({"PULP_CBC_CMD", "COIN_CMD", "CPLEX_CMD", "CPLEX_PY", "SCIP_PY", "XPRESS",
                             "XPRESS_PY", "HiGHS", "GUROBI"})
_READ_DIGITS = 1e-7  # CBC's solution file has 8 significant digits: values err by <= 5e-8 relative
_TIME_LIMIT_SHARE = 0.9  # a non-optimal finish after this share of the limit counts as the time limit


@contextlib.contextmanager
def _quiet():
    """PuLP 3 warns about its 4.0 migration on every object it builds, and solvers it drives in
    this process (HiGHS through highspy, licence checks) may print natively: none of it is for
    the user's stdout (solvers/quiet.py)."""
    with warnings.catch_warnings(), muted_native_output():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _solver_class(pulp_name: str):
    import pulp

    return getattr(pulp, pulp_name, None) or getattr(pulp.apis, pulp_name)


@functools.lru_cache(maxsize=None)
def installed(backend: str) -> str | None:
    """The first PuLP solver of `backend` that works here (its name), or None. Cached: some
    solvers check a licence or start a process to answer."""
    for name in BACKENDS[backend]:
        try:
            with _quiet():
                if _solver_class(name)(msg=False).available():
                    return name
        except Exception:  # a broken installation is "not installed"
            continue
    return None


class PulpSolver:
    """One PuLP model holding one problem; objectives and integrality can be changed between
    solves (each solve is a fresh run: PuLP keeps no warm basis)."""

    def __init__(self, problem: MilpProblem, relax: bool = False, threads: int = 1,
                 primal_simplex: bool = False, presolve: bool = True, *, backend: str = "cbc") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown PuLP backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        name = installed(backend)
        if name is None:
            raise ValueError(f"solver {backend!r} is not installed (PuLP finds none of {', '.join(BACKENDS[backend])})")
        del primal_simplex  # a HiGHS re-optimisation hint; every PuLP solve starts afresh
        self.problem, self.relax, self.threads, self.presolve = problem, relax, int(threads), presolve
        self.backend, self.pulp_name = backend, name
        self._integer = problem.integer.astype(bool).copy()
        self._cost = np.zeros(problem.num_cols)
        self._bounded = bool(np.isfinite(problem.col_lo).all() and np.isfinite(problem.col_hi).all())
        self._build()
        self.set_objective(problem.c)

    def _build(self) -> None:
        """Columns, then one affine expression per row from the CSR arrays: an equality for
        row_lo == row_hi, else a constraint per finite side."""
        import pulp

        p = self.problem
        self.prob = pulp.LpProblem("milp", pulp.LpMinimize)
        lo = [float(v) if np.isfinite(v) else None for v in p.col_lo]
        hi = [float(v) if np.isfinite(v) else None for v in p.col_hi]
        with _quiet():
            self._vars = [pulp.LpVariable(f"x{j}", lo[j], hi[j], self._category(self._integer[j]))
                          for j in range(p.num_cols)]
        cols = np.empty(p.num_cols, dtype=object)
        cols[:] = self._vars
        A = p.A.tocsr()
        self._constraint_rows: list[int] = []
        self._constraints = []
        for i in range(p.num_rows):
            s, e = A.indptr[i], A.indptr[i + 1]
            terms = list(zip(cols[A.indices[s:e]].tolist(), A.data[s:e].tolist()))
            r_lo, r_hi = float(p.row_lo[i]), float(p.row_hi[i])
            if r_lo == r_hi and np.isfinite(r_lo):
                self._add(i, terms, pulp.LpConstraintEQ, r_lo, f"e{i}")
                continue
            if np.isfinite(r_lo):
                self._add(i, terms, pulp.LpConstraintGE, r_lo, f"l{i}")
            if np.isfinite(r_hi):
                self._add(i, terms, pulp.LpConstraintLE, r_hi, f"u{i}")

    def _add(self, row: int, terms: list, sense: int, rhs: float, name: str) -> None:
        import pulp

        constraint = pulp.LpConstraint(pulp.LpAffineExpression(terms), sense, name, rhs)
        self.prob.addConstraint(constraint, name)
        self._constraints.append(constraint)
        self._constraint_rows.append(row)

    def _category(self, integer: bool) -> str:
        import pulp

        return pulp.LpInteger if integer and not self.relax else pulp.LpContinuous

    def set_objective(self, c: np.ndarray) -> None:
        """Replace the objective (a new affine expression over the nonzero costs)."""
        import pulp

        c = np.asarray(c, dtype=np.float64)
        nz = np.flatnonzero(c)
        self.prob.setObjective(pulp.LpAffineExpression([(self._vars[j], float(c[j])) for j in nz]))
        self._cost = c.copy()

    @property
    def is_mip(self) -> bool:
        """Whether the next solve is a MIP (some column integer, not relaxed)."""
        return not self.relax and bool(self._integer.any())

    def set_integer(self, integer: np.ndarray) -> None:
        """Change which columns are integer (bool mask over the columns)."""
        integer = np.asarray(integer, dtype=bool)
        if self.relax:
            return
        for j in np.flatnonzero(integer != self._integer):
            self._vars[j].cat = self._category(bool(integer[j]))
        self._integer = integer.copy()

    def set_diagonal_hessian(self, diag: np.ndarray) -> None:
        raise ValueError(f"solver {self.backend!r} has no QP support here (quadratic objectives need HiGHS)")

    # --- solving ---------------------------------------------------------------------------

    def _solver(self, options: SolveOptions, mip: bool):
        """(the PuLP solver object for one solve, whether it got the cutoff): the options its
        constructor names, plus the backend's own switches for cutoff and target where they are
        known to work."""
        cls = _solver_class(self.pulp_name)
        wanted = {"mip": mip, "msg": False, "timeLimit": max(float(options.time_limit), 0.01),
                  "gapRel": float(options.rel_gap), "gapAbs": float(options.abs_gap),
                  "warmStart": mip and options.initial is not None,
                  "threads": self.threads if self.threads > 1 or self.pulp_name not in _CBC else None}
        if not self.presolve:
            wanted["presolve"] = False
        params = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in wanted.items() if k in params and v is not None}
        # "Optimal" hides at most the gaps we set: a solver that cannot take both keeps its own
        # (e.g. 1e-4 relative), which the bound below would not subtract.
        self._gaps_set = "gapRel" in kwargs and "gapAbs" in kwargs
        cutoff_used = False
        if self.pulp_name in _CBC and mip:
            # CBC only looks for solutions this much better than its incumbent (default 1e-5,
            # our whole tolerance): keep it at the allowed gap, which the bound below subtracts.
            kwargs["options"] = [f"increment {self._increment(options)!r}"]
            # CBC's scaling makes it return wrong optima on some verification MILPs (seen on a
            # ResNet margin MILP, see benchmarks/RESULTS.md, "Why the defaults are what they are";
            # with scaling off it agrees with HiGHS). Their rows mix tiny and large coefficients.
            kwargs["options"].append("scaling off")
            if np.isfinite(options.cutoff):
                kwargs["options"].append(f"cutoff {float(options.cutoff)!r}")
                cutoff_used = True
        elif self.pulp_name == "HiGHS":
            if mip and np.isfinite(options.cutoff):
                kwargs["objective_bound"] = float(options.cutoff)
                cutoff_used = True
            if mip and np.isfinite(options.target):
                kwargs["objective_target"] = float(options.target)
            if mip:  # as the native backend (SolveOptions.feasibility_tol)
                kwargs["mip_feasibility_tolerance"] = float(options.feasibility_tol)
            if not self.presolve:
                kwargs["presolve"] = "off"
        elif self.pulp_name == "GUROBI":
            kwargs["Threads"] = self.threads
        if self.pulp_name == "PULP_CBC_CMD":
            kwargs["_skip_v4_deprecation"] = True
        with _quiet():
            return cls(**kwargs), cutoff_used

    @staticmethod
    def _increment(options: SolveOptions) -> float:
        return max(float(options.abs_gap), 1e-10)

    def solve(self, options: SolveOptions) -> SolveResult:
        import pulp

        mip = self.is_mip
        solver, cutoff_used = self._solver(options, mip)
        p = self.problem
        initial = None
        if mip and options.initial is not None:
            initial = np.clip(np.asarray(options.initial, dtype=np.float64), p.col_lo, p.col_hi)
        for j, v in enumerate(self._vars):  # no stale values from an earlier solve
            v.varValue = None if initial is None else float(initial[j])
        tmp = tempfile.mkdtemp(prefix="verifier-pulp-") if isinstance(solver, pulp.LpSolver_CMD) else None
        if tmp is not None:
            solver.tmpDir = tmp
        error = None
        start = time.perf_counter()
        try:
            with _quiet():
                self.prob.solve(solver)
        except Exception as e:  # a solver failure is an unknown outcome, never a proof
            error = f"{type(e).__name__}: {e}"
        finally:
            elapsed = time.perf_counter() - start
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return self._result(options, mip, elapsed, error, cutoff_used)

    def _result(self, options: SolveOptions, mip: bool, elapsed: float, error: str | None,
                cutoff_used: bool) -> SolveResult:
        import pulp

        p = self.problem
        status_code, sol_code = (self.prob.status, self.prob.sol_status) if error is None else (None, None)
        extra = {"solver": self.pulp_name, "pulp_status": status_code, "pulp_sol_status": sol_code}
        if error is not None:
            extra["error"] = error
            return SolveResult(SolveStatus.OTHER, None, np.inf, -np.inf, None, 0, elapsed, extra)
        x, objective = None, np.inf
        if sol_code in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            x = np.array([np.nan if v.varValue is None else v.varValue for v in self._vars], dtype=np.float64)
            # A column in no row and with no cost may be left out of the model: any value is fine.
            x = np.clip(np.where(np.isnan(x), 0.0, x), p.col_lo, p.col_hi)
            objective = float(self._cost @ x)
        trusted = self.pulp_name in _TRUSTS_OPTIMAL and (self._gaps_set or not mip)
        if status_code == pulp.LpStatusOptimal and sol_code == pulp.LpSolutionOptimal and x is not None and trusted:
            status = SolveStatus.OPTIMAL
        elif status_code == pulp.LpStatusInfeasible and self._bounded and trusted:
            status = SolveStatus.INFEASIBLE
        elif elapsed >= _TIME_LIMIT_SHARE * options.time_limit:
            status = SolveStatus.TIME_LIMIT
        else:
            status = SolveStatus.OTHER
        dual_bound = -np.inf
        if status == SolveStatus.OPTIMAL:
            dual_bound = objective - self._hidden(options, mip, x, objective)
        native = self._native(mip, objective)
        if native is not None:
            status, dual_bound = native
            extra["native_bound"] = True
        if status == SolveStatus.INFEASIBLE:
            dual_bound = float(options.cutoff) if cutoff_used else np.inf  # "none below the cutoff"
        elif cutoff_used:  # with a cutoff, a finished search proves only "nothing below it"
            dual_bound = min(dual_bound, float(options.cutoff))
        row_dual = None
        if not mip and status == SolveStatus.OPTIMAL and all(c.pi is not None for c in self._constraints):
            row_dual = np.zeros(p.num_rows)
            np.add.at(row_dual, np.asarray(self._constraint_rows, dtype=int),
                      np.array([c.pi for c in self._constraints], dtype=np.float64))
        return SolveResult(status, x, objective, dual_bound, row_dual, 0, elapsed, extra)

    def _hidden(self, options: SolveOptions, mip: bool, x: np.ndarray, objective: float) -> float:
        """How far below an "optimal" objective the true optimum may lie: the allowed gaps
        (absolute; relative, of the larger of incumbent and bound, as CBC measures it), CBC's
        cutoff increment, and the rounding of the solution read back."""
        read = _READ_DIGITS * float(np.abs(self._cost) @ np.abs(x)) + 1e-12
        if not mip:
            return read
        rel = min(float(options.rel_gap), 0.5)
        gap = max(float(options.abs_gap), rel * abs(objective) / (1.0 - rel))
        if self.pulp_name in _CBC:
            gap = max(gap, self._increment(options))
        return gap + read

    def _native(self, mip: bool, objective: float) -> tuple[SolveStatus, float] | None:
        """(status, proven bound) from the solver object PuLP keeps, for the backends whose
        bound PuLP can reach; None for the others (CBC and the command-line solvers)."""
        model = getattr(self.prob, "solverModel", None)
        if model is None:
            return None
        try:
            if self.pulp_name == "HiGHS":
                import highspy

                s = highspy.HighsModelStatus
                status = {s.kOptimal: SolveStatus.OPTIMAL, s.kInfeasible: SolveStatus.INFEASIBLE,
                          s.kTimeLimit: SolveStatus.TIME_LIMIT, s.kObjectiveTarget: SolveStatus.TARGET,
                          }.get(model.getModelStatus(), SolveStatus.OTHER)
                if status == SolveStatus.INFEASIBLE and not self._bounded:
                    status = SolveStatus.OTHER
                bound = float(model.getInfo().mip_dual_bound) if mip else (
                    objective if status == SolveStatus.OPTIMAL else -np.inf)
                return status, bound
            if self.pulp_name == "GUROBI":  # GRB status codes: 2 optimal, 3 infeasible, 9 time limit
                status = {2: SolveStatus.OPTIMAL, 3: SolveStatus.INFEASIBLE, 9: SolveStatus.TIME_LIMIT
                          }.get(int(model.Status), SolveStatus.OTHER)
                if not mip:
                    return status, objective if status == SolveStatus.OPTIMAL else -np.inf
                try:
                    return status, float(model.ObjBound)
                except Exception:  # no bound computed (e.g. stopped before the root)
                    return status, -np.inf
        except Exception:  # whatever went wrong, fall back to what PuLP itself reports
            return None
        return None
