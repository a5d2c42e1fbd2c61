"""Adding columns and rows to a finished MILP: the network's encoding stays as built, and a
caller (a distortion objective, an adversarial goal, a cut) appends its own block."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from solvers.base import MilpProblem


def extend(p: MilpProblem, col_lo=(), col_hi=(), integer=(), rows: sp.spmatrix | None = None,
           row_lo=(), row_hi=()) -> tuple[MilpProblem, np.ndarray]:
    """p plus new columns (bounds, integrality) and new rows over all columns (old + new).

    Returns the new problem and the indices of the added columns. The objective is kept
    (zero on the new columns)."""
    col_lo = np.asarray(col_lo, dtype=np.float64).ravel()
    k = col_lo.size
    n = p.num_cols + k
    A = p.A if k == 0 else sp.hstack([p.A, sp.csc_matrix((p.num_rows, k))])
    row_lo = np.asarray(row_lo, dtype=np.float64).ravel()
    if rows is not None and row_lo.size:
        rows = sp.csr_matrix(rows)
        if rows.shape[1] < n:
            rows = sp.csr_matrix((rows.data, rows.indices, rows.indptr), shape=(rows.shape[0], n))
        A = sp.vstack([A, rows])
    new = MilpProblem(
        c=np.concatenate([p.c, np.zeros(k)]),
        A=sp.csc_matrix(A),
        row_lo=np.concatenate([p.row_lo, row_lo]),
        row_hi=np.concatenate([p.row_hi, np.asarray(row_hi, dtype=np.float64).ravel()]),
        col_lo=np.concatenate([p.col_lo, col_lo]),
        col_hi=np.concatenate([p.col_hi, np.asarray(col_hi, dtype=np.float64).ravel()]),
        integer=np.concatenate([p.integer, np.broadcast_to(np.asarray(integer, dtype=bool), (k,))]))
    return new, np.arange(p.num_cols, n)


def triplets(num_rows: int, num_cols: int, r, c, v) -> sp.csr_matrix:
    """A sparse block from (row, column, value) arrays."""
    return sp.csr_matrix((np.asarray(v, dtype=np.float64), (np.asarray(r), np.asarray(c))),
                         shape=(num_rows, num_cols))
