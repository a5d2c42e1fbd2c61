"""The solver-agnostic interface: plain arrays in, a typed result out."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp


@dataclass
class MilpProblem:
    """minimize c@x  s.t.  row_lo <= A@x <= row_hi,  col_lo <= x <= col_hi,  x[integer] integral."""

    c: np.ndarray
    A: sp.csc_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray
    integer: np.ndarray  # bool per column

    @property
    def num_cols(self) -> int:
        return self.c.size

    @property
    def num_rows(self) -> int:
        return self.row_lo.size

    @cached_property
    def abs_AT(self) -> sp.csr_matrix:
        """|A| transposed, cached: used to bound rounding in dual-derived bounds."""
        return abs(self.A).T.tocsr()


class SolveStatus(str, enum.Enum):
    OPTIMAL = "optimal"  # finished; dual_bound is a proof (to the solver's tolerances)
    INFEASIBLE = "infeasible"  # no solution, or none better than the cutoff
    TARGET = "target"  # stopped on reaching the objective target: x is an incumbent
    TIME_LIMIT = "time_limit"
    OTHER = "other"  # anything else (numerical trouble, interrupted): never a proof


@dataclass
class SolveOptions:
    time_limit: float = 60.0
    relax: bool = False  # drop integrality (LP relaxation)
    cutoff: float = np.inf  # only solutions with objective <= cutoff are of interest
    target: float = -np.inf  # stop as soon as an incumbent reaches this objective
    initial: np.ndarray | None = None  # a feasible point to seed the MIP
    threads: int = 1
    rel_gap: float = 1e-9  # a MIP stops when (incumbent - bound) is within either gap
    abs_gap: float = 1e-9
    # How far a MIP solution may violate a row or integrality (HiGHS: mip_feasibility_tolerance,
    # default 1e-6). The solver optimises over the rows relaxed by this much (its presolve
    # reductions use it), so its objective *and* dual bound may sit below the true optimum by
    # about this times the objective's sensitivity to the rows: still a valid lower bound, but
    # not the exact value. Exact answers ask for EXACT_FEASIBILITY.
    feasibility_tol: float = 1e-6
    # Share of a MIP's effort spent on primal heuristics (HiGHS: mip_heuristic_effort; None: the
    # solver's default, 0.05 in HiGHS). A search for a proof under a cutoff can do without them,
    # and proves sooner (benchmarks/RESULTS.md, "oval21 (issue 25): the MIP stage on the wide and
    # deep nets too"). Other back ends keep their own setting.
    heuristic_effort: float | None = None


#: Feasibility tolerance for solves whose optimum is reported as exact (VerifyOptions.exact): at
#: the default 1e-6 HiGHS returns points violating rows, and "optimal" values below the true one,
#: by about that tolerance; at 1e-9 both errors shrink with it, far inside the 1e-6 that exact
#: answers promise (measured on a tiny pad/ReLU MILP, see benchmarks/RESULTS.md, "Why the
#: defaults are what they are").
EXACT_FEASIBILITY = 1e-9


@dataclass
class SolveResult:
    status: SolveStatus
    x: np.ndarray | None  # best solution found, if any
    objective: float  # objective of x (inf if none)
    dual_bound: float  # proven lower bound on the optimum (-inf if none)
    row_dual: np.ndarray | None = None  # LP duals, for safe bounds
    nodes: int = 0
    time: float = 0.0
    extra: dict = field(default_factory=dict)
