"""Solver backends. A backend knows nothing about networks: a `MilpProblem` goes in, a
`SolveResult` (status, solution, objective, dual bound) comes out.

"highs" is the native HiGHS backend (the default and the hot path); every other name is a
solver driven through PuLP (solvers/pulp_solver.py), imported only when asked for.
"""

from __future__ import annotations

from solvers.base import MilpProblem, SolveOptions, SolveResult, SolveStatus
from solvers.highs import HighsSolver

#: Names accepted by `make_solver` (and `--solver` / `solver=`): the native HiGHS backend, then
#: the PuLP ones ("pulp-highs" is HiGHS through PuLP's wrapper, for cross-checks).
SOLVERS: tuple[str, ...] = ("highs", "cbc", "gurobi", "cplex", "glpk", "scip", "xpress", "copt", "mosek",
                            "pulp-highs")


def available_solvers() -> list[str]:
    """The names of SOLVERS that can run here."""
    from solvers.pulp_solver import installed

    return ["highs"] + [name for name in SOLVERS[1:] if installed(name) is not None]


def check_solver(name) -> str:
    """`name` if that solver can run here; else a ValueError with one line naming it, saying
    whether it is unknown or not installed, and listing the available ones."""
    if name == "highs":
        return name
    if not isinstance(name, str) or name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}: available here: {', '.join(available_solvers())} "
                         f"(known: {', '.join(SOLVERS)})")
    from solvers.pulp_solver import BACKENDS, installed

    if installed(name) is None:
        raise ValueError(f"solver {name!r} is not installed (PuLP finds none of {', '.join(BACKENDS[name])}); "
                         f"available here: {', '.join(available_solvers())}")
    return name


def make_solver(name: str, problem: MilpProblem, **kwargs):
    """A solver of `problem` by name: "highs" -> HighsSolver, any other -> PulpSolver.
    kwargs: relax, threads, primal_simplex, presolve (as HighsSolver takes them)."""
    if check_solver(name) == "highs":
        return HighsSolver(problem, **kwargs)
    from solvers.pulp_solver import PulpSolver

    return PulpSolver(problem, backend=name, **kwargs)


__all__ = ["MilpProblem", "SolveOptions", "SolveResult", "SolveStatus", "HighsSolver", "SOLVERS",
           "available_solvers", "check_solver", "make_solver"]
