"""ReLU, the only source of non-convexity: y = max(0, z).

Its MILP encoding is MIPVerify's big-M form over the pre-activation bounds (l, u). Stable
neurons (u <= 0 or l >= 0) get no binary at all, which is where tight bounds pay off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from verifier.encode.builder import Handle, MilpBuilder


@dataclass
class Relu:
    inputs: list[str]

    def forward(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.maximum(xs[0], 0.0)

    def vjp(self, grad: np.ndarray, xs: list[np.ndarray]) -> list[np.ndarray]:
        return [grad * (xs[0] > 0)]

    def backward_lower(self, lam, bounds):
        """Back-substitution with the triangle relaxation: upper line u(z-l)/(u-l) for negative
        coefficients, lower line a*z (a = 1 if u > -l else 0, as CROWN) for positive ones."""
        lo, hi = bounds[0]
        unstable = (lo < 0) & (hi > 0)
        active = lo >= 0
        upper_slope = np.where(unstable, hi / np.where(unstable, hi - lo, 1.0), active.astype(float))
        upper_offset = np.where(unstable, -upper_slope * lo, 0.0)
        lower_slope = np.where(unstable, (hi > -lo).astype(float), active.astype(float))
        if sp.issparse(lam):
            lam = sp.csr_matrix(lam)
            pos, neg = lam.maximum(0), lam.minimum(0)
            part = sp.csr_matrix(pos.multiply(lower_slope[None, :]) + neg.multiply(upper_slope[None, :]))
            return [part], np.asarray(neg @ upper_offset).ravel()
        pos, neg = np.maximum(lam, 0), np.minimum(lam, 0)
        return [pos * lower_slope + neg * upper_slope], neg @ upper_offset

    def interval(self, bounds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = bounds[0]
        return np.maximum(lo, 0.0), np.maximum(hi, 0.0)

    def encode(self, builder: MilpBuilder, handles: list[Handle], own_bounds, input_bounds,
               node: str = "") -> Handle:
        """Big-M: y >= z, y <= z - l(1-a), y <= u a, 0 <= y <= u, a binary (relaxed in LPs)."""
        (h,) = handles
        lo, hi = input_bounds[0]
        expr = h.widened(builder.num_cols)
        is_const = np.diff(expr.indptr) == 0
        keep = ~is_const & (lo >= 0)  # stable active: y = z
        unstable = np.flatnonzero(~is_const & (lo < 0) & (hi > 0))
        const = np.where(is_const, np.maximum(h.const, 0.0), np.where(keep, h.const, 0.0))
        y = np.zeros(0, dtype=np.int64)
        if unstable.size:
            n = unstable.size
            l, u, c = lo[unstable], hi[unstable], h.const[unstable]
            z = expr[unstable]
            y = builder.add_cols(np.zeros(n), u)
            a = builder.add_cols(np.zeros(n), np.ones(n), integer=True)
            ones = np.ones(n)
            r1 = builder.add_rows(c, np.full(n, np.inf))  # y - z >= c
            builder.add_entries(r1, y, ones)
            builder.add_expr_rows(r1, z, -1.0)
            r2 = builder.add_rows(np.full(n, -np.inf), c - l)  # y - z - l a <= c - l
            builder.add_entries(r2, y, ones)
            builder.add_expr_rows(r2, z, -1.0)
            builder.add_entries(r2, a, -l)
            r3 = builder.add_rows(np.full(n, -np.inf), np.zeros(n))  # y - u a <= 0
            builder.add_entries(r3, y, ones)
            builder.add_entries(r3, a, -u)
            builder.relu_binaries.append((node, unstable, y, a))
            const[unstable] = 0.0
        kept = sp.diags(keep.astype(float)) @ expr
        picks = sp.csr_matrix((np.ones(unstable.size), (unstable, y)), shape=(lo.size, builder.num_cols))
        kept = sp.csr_matrix((kept.data, kept.indices, kept.indptr), shape=(lo.size, builder.num_cols))
        return Handle(sp.csr_matrix(kept + picks), const)
