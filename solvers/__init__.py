"""Solver backends. A backend knows nothing about networks: a `MilpProblem` goes in, a
`SolveResult` (status, solution, objective, dual bound) comes out."""

from solvers.base import MilpProblem, SolveOptions, SolveResult, SolveStatus
from solvers.highs import HighsSolver

__all__ = ["MilpProblem", "SolveOptions", "SolveResult", "SolveStatus", "HighsSolver"]
