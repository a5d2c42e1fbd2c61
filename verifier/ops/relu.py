"""ReLU, the only source of non-convexity: y = max(0, z).

Its MILP encoding is MIPVerify's big-M form over the pre-activation bounds (l, u). Stable
neurons (u <= 0 or l >= 0) get no binary at all, which is where tight bounds pay off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from verifier.encode.builder import Handle, MilpBuilder
from verifier.ops.contract import Backward, StepContext

#: float32 relaxations clamp bounds to this (no inf, no inf * 0): they only steer steps.
FAST_LIMIT = 1e30


@dataclass
class Relu:
    inputs: list[str]

    def forward(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.maximum(xs[0], 0.0)

    def compile(self, device: torch.device, dtype: torch.dtype, sizes: list[int]) -> "ReluBound":
        return ReluBound()

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


@dataclass
class ReluRelaxation:
    """The triangle relaxation's fixed parts for a batch, each (B or 1, 1, n): the upper line
    y <= up_slope z + up_offset, and the masks of active (slope 1) and unstable neurons (kept as
    bool: a batch of domains holds one per split node, and on CNNs these are the bulk of a
    round's memory). Inactive neurons are neither."""

    up_slope: torch.Tensor
    up_offset: torch.Tensor
    active: torch.Tensor
    unstable: torch.Tensor

    @property
    def default_slope(self) -> torch.Tensor:
        """CROWN's lower slope: 1 where the ReLU is closer to identity (u > -l, i.e. an upper
        slope above 1/2), 0 elsewhere; 1 on active neurons."""
        return (self.active | (self.unstable & (self.up_slope > 0.5))).to(self.up_slope.dtype)

    def fix(self, rows: torch.Tensor, neurons: torch.Tensor, active: bool) -> None:
        """In place: domains `rows` get neuron `neurons` fixed to one side, as `relax` would give
        for a split neuron (active: identity; inactive: zero)."""
        self.up_slope[rows, 0, neurons] = 1.0 if active else 0.0
        self.active[rows, 0, neurons] = active
        self.up_offset[rows, 0, neurons] = 0.0
        self.unstable[rows, 0, neurons] = False

    def repeated(self, reps: int) -> "ReluRelaxation":
        """Each domain's relaxation repeated `reps` times in a row (copies, safe to `fix`)."""
        return ReluRelaxation(*(t.repeat_interleave(reps, 0)
                                for t in (self.up_slope, self.up_offset, self.active, self.unstable)))


class ReluBound:
    """ReLU in the bound engine (contract.BoundOp); the only op branch and bound splits."""

    linear = False
    splittable = True
    cost = 0.0  # elementwise: negligible beside the linear maps

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.relu(xs[0])

    def interval(self, bounds):
        lo, hi = bounds[0]
        return lo.clamp(min=0), hi.clamp(min=0)

    def relax(self, bounds) -> ReluRelaxation:
        lo, hi = bounds[0]
        if lo.dtype != torch.float64:  # keep float32 finite: its relaxation only steers steps
            lo, hi = lo.clamp(-FAST_LIMIT, FAST_LIMIT), hi.clamp(-FAST_LIMIT, FAST_LIMIT)
        unstable = (lo < 0) & (hi > 0)
        active = lo >= 0
        slope = torch.where(unstable, hi / torch.where(unstable, hi - lo, 1.0), active.to(lo.dtype))
        parts = (slope, torch.where(unstable, -slope * lo, 0.0), active, unstable)
        return ReluRelaxation(*(t.unsqueeze(-2) for t in parts))

    def backward(self, lam: torch.Tensor, ctx: StepContext) -> Backward:
        """Upper line where the coefficient is negative, lower line alpha z (alpha in [0, 1])
        where positive; a split's constraint enters as beta * sign * z (beta >= 0)."""
        r = ctx.relaxation
        alpha = r.default_slope if ctx.alpha is None else ctx.alpha
        lo_slope = torch.where(r.unstable, alpha, r.active.to(lam.dtype))
        neg = lam.clamp(max=0)
        # sums over the neurons as products (B, m, n) @ (B or 1, n, 1): one pass, not two
        intercept = (neg @ r.up_offset.transpose(-1, -2)).squeeze(-1)
        a = lam * lo_slope + neg * (r.up_slope - lo_slope)
        if ctx.beta is not None:
            a = a + ctx.beta * ctx.sign
        magnitude = 0.0
        if ctx.rigorous:
            with torch.no_grad():  # the relaxation's products, over |z| <= extent (of the root box)
                magnitude = (lam.abs() @ ctx.extents[0].unsqueeze(-1)).squeeze(-1) + intercept.abs()
        return Backward([a], intercept, magnitude)

    @staticmethod
    def uncertain(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """Inputs whose tighter bounds would change the relaxation: the unstable ones."""
        return (lower < 0) & (upper > 0)

    @staticmethod
    def clamp(lower: torch.Tensor, upper: torch.Tensor, signs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-domain input bounds with split neurons clamped to their side (signs (B, n))."""
        return torch.where(signs < 0, lower.clamp(min=0), lower), torch.where(signs > 0, upper.clamp(max=0), upper)

    @staticmethod
    def split_scores(mu: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """(B, n) BaBSR-style estimate of what splitting each neuron gains: its relaxation gap,
        weighted by its coefficient mu (B, m, n) in the bound; 0 where stable."""
        unstable = (lower < 0) & (upper > 0)
        width = torch.where(unstable, upper - lower, torch.ones_like(upper))
        upper_gap = (upper * -lower / width).unsqueeze(1)
        lower_gap = torch.maximum((1 - alpha) * upper.unsqueeze(1), -alpha * lower.unsqueeze(1))
        score = (mu.clamp(max=0).neg() * upper_gap + mu.clamp(min=0) * lower_gap).sum(1)
        return torch.where(unstable, score + 1e-12, torch.zeros_like(score))
