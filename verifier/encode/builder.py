"""Accumulates a MILP as sparse triplets; no per-variable Python objects.

Ops add blocks of columns and rows with numpy arrays; `build` assembles one CSC matrix that a
backend passes to its solver in a single call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from solvers.base import MilpProblem


@dataclass
class Handle:
    """A node's neurons as affine expressions of MILP columns: value = expr @ x + const.

    Affine ops get no columns of their own: their expressions are substituted through, which
    keeps the LP small (a stable ReLU then costs nothing). Only unstable ReLUs add columns.
    """

    expr: sp.csr_matrix  # (neurons, columns so far)
    const: np.ndarray

    def widened(self, num_cols: int) -> sp.csr_matrix:
        """expr with columns added since it was made (all zero)."""
        e = self.expr
        return sp.csr_matrix((e.data, e.indices, e.indptr), shape=(e.shape[0], num_cols))


@dataclass
class MilpBuilder:
    col_lo: list = field(default_factory=list)
    col_hi: list = field(default_factory=list)
    col_int: list = field(default_factory=list)
    row_lo: list = field(default_factory=list)
    row_hi: list = field(default_factory=list)
    entries: list = field(default_factory=list)
    num_cols: int = 0
    num_rows: int = 0
    relu_binaries: list = field(default_factory=list)  # (relu node, neuron indices, y cols, a cols)
    # (max node, open outputs, their y cols, each binary's position in them, its candidate, a cols)
    max_binaries: list = field(default_factory=list)

    def add_cols(self, lo: np.ndarray, hi: np.ndarray, integer: bool = False) -> np.ndarray:
        lo = np.asarray(lo, dtype=np.float64)
        n = lo.size
        self.col_lo.append(lo)
        self.col_hi.append(np.asarray(hi, dtype=np.float64))
        self.col_int.append(np.full(n, integer))
        idx = np.arange(self.num_cols, self.num_cols + n)
        self.num_cols += n
        return idx

    def add_rows(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        lo = np.asarray(lo, dtype=np.float64)
        n = lo.size
        self.row_lo.append(lo)
        self.row_hi.append(np.asarray(hi, dtype=np.float64))
        idx = np.arange(self.num_rows, self.num_rows + n)
        self.num_rows += n
        return idx

    def add_entries(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        self.entries.append((np.asarray(rows), np.asarray(cols), np.asarray(vals, dtype=np.float64)))

    def add_expr_rows(self, rows: np.ndarray, expr: sp.csr_matrix, scale: float = 1.0) -> None:
        """Add scale * expr (one expression per row in `rows`) to the constraint matrix."""
        coo = expr.tocoo()
        self.add_entries(rows[coo.row], coo.col, scale * coo.data)

    def build(self) -> MilpProblem:
        def cat(parts, dtype=np.float64):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        rows = cat([e[0] for e in self.entries], np.int64)
        cols = cat([e[1] for e in self.entries], np.int64)
        vals = cat([e[2] for e in self.entries])
        A = sp.csc_matrix((vals, (rows, cols)), shape=(self.num_rows, self.num_cols))
        A.sum_duplicates()
        return MilpProblem(
            c=np.zeros(self.num_cols),
            A=A,
            row_lo=cat(self.row_lo),
            row_hi=cat(self.row_hi),
            col_lo=cat(self.col_lo),
            col_hi=cat(self.col_hi),
            integer=cat(self.col_int, bool),
        )
