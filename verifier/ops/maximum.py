"""The maximum of groups of neurons: y_j = max_{i in group_j} x_i (MaxPool, GlobalMaxPool).

Every op method first drops the candidates that bounds rule out: x_i with u_i <= max_k l_k
can never exceed the candidate with the largest lower bound. A group left with one candidate is
that candidate (affine, no binary); otherwise the MILP uses MIPVerify's `maximum` encoding,
one binary per remaining candidate:

    y >= x_i,   y <= x_i + M_i (1 - a_i),   sum_i a_i = 1,   M_i = max_{k != i} u_k - l_i,

exact because a_i = 1 forces y = x_i while y >= every x_k, and a_i = 0 leaves y <= x_i + M_i,
which every max satisfies (y - x_i <= max(0, max_{k != i} u_k - l_i)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from verifier.encode.builder import Handle, MilpBuilder
from verifier.ops.contract import Backward, StepContext


@dataclass
class Maximum:
    """y_j = max of x over the entries of groups[j] that are >= 0 (rows padded with -1)."""

    inputs: list[str]
    groups: np.ndarray  # (outputs, widest group) input indices, -1 for padding

    def __post_init__(self) -> None:
        self.groups = np.asarray(self.groups, dtype=np.int64)
        if self.groups.ndim != 2 or (self.groups[:, 0] < 0).any():
            raise ValueError("every group of a Maximum needs at least one candidate")
        self._valid = self.groups >= 0
        self._safe = np.where(self._valid, self.groups, 0)  # indexable everywhere

    @property
    def size(self) -> int:
        return self.groups.shape[0]

    def _gather(self, values: np.ndarray, fill: float) -> np.ndarray:
        """values[..., groups] with the padding set to `fill` (shape (..., outputs, width))."""
        return np.where(self._valid, values[..., self._safe], fill)

    def forward(self, xs: list[np.ndarray]) -> np.ndarray:
        return self._gather(xs[0], -np.inf).max(axis=-1)

    def compile(self, device: torch.device, dtype: torch.dtype, sizes: list[int]) -> "MaximumBound":
        return MaximumBound(torch.as_tensor(self._safe, device=device), torch.as_tensor(self._valid, device=device),
                            sizes[0])

    def vjp(self, grad: np.ndarray, xs: list[np.ndarray]) -> list[np.ndarray]:
        """The gradient flows to each group's (first) largest candidate."""
        best = self._gather(xs[0], -np.inf).argmax(axis=-1)  # (B, outputs) slot of the winner
        winner = self._safe[np.arange(self.size)[None, :], best]
        out = np.zeros_like(xs[0])
        rows = np.repeat(np.arange(grad.shape[0]), self.size)
        np.add.at(out, (rows, winner.ravel()), grad.ravel())
        return [out]

    def interval(self, bounds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = bounds[0]
        return self._gather(lo, -np.inf).max(axis=-1), self._gather(hi, -np.inf).max(axis=-1)

    def candidates(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(leader, alive): per group the candidate with the largest lower bound (ties: the larger
        upper bound) and the mask (outputs, width) of candidates bounds cannot rule out."""
        g_lo, g_hi = self._gather(lo, -np.inf), self._gather(hi, -np.inf)
        order = np.lexsort((-g_hi, -g_lo), axis=-1)[:, 0] if g_lo.size else np.zeros(0, np.int64)
        best_lo = g_lo[np.arange(self.size), order]
        alive = self._valid & (g_hi > best_lo[:, None])
        alive[np.arange(self.size), order] = True
        return self._safe[np.arange(self.size), order], alive

    def backward_lower(self, lam, bounds):
        """Back-substitution: y_j >= x_leader for positive coefficients; for negative ones
        y_j = x_leader when the leader is the only live candidate, else y_j <= max_i u_i."""
        lo, hi = bounds[0]
        leader, alive = self.candidates(lo, hi)
        exact = alive.sum(axis=1) == 1
        upper = np.where(exact, 0.0, self.interval(bounds)[1])
        n_out, n_in = self.size, lo.size
        pick = sp.csr_matrix((np.ones(n_out), (np.arange(n_out), leader)), shape=(n_out, n_in))
        pick_exact = sp.csr_matrix((exact.astype(float), (np.arange(n_out), leader)), shape=(n_out, n_in))
        if sp.issparse(lam):
            lam = sp.csr_matrix(lam)
            pos, neg = lam.maximum(0), lam.minimum(0)
            return [sp.csr_matrix(pos @ pick + neg @ pick_exact)], np.asarray(neg @ upper).ravel()
        pos, neg = np.maximum(lam, 0), np.minimum(lam, 0)
        return [np.asarray((pick.T @ pos.T).T + (pick_exact.T @ neg.T).T)], neg @ upper

    def encode(self, builder: MilpBuilder, handles: list[Handle], own_bounds, input_bounds,
               node: str = "") -> Handle:
        (h,) = handles
        lo, hi = input_bounds[0]
        leader, alive = self.candidates(lo, hi)
        exact = alive.sum(axis=1) == 1
        const = np.where(exact, h.const[leader], 0.0)
        open_groups = np.flatnonzero(~exact)
        y = np.zeros(0, dtype=np.int64)
        if open_groups.size:
            y = self._encode_open(builder, h, lo, hi, alive, open_groups, input_bounds, node)
        width = builder.num_cols
        n_out = self.size
        keep = np.flatnonzero(exact)
        select = sp.csr_matrix((np.ones(keep.size), (keep, leader[keep])), shape=(n_out, lo.size))
        picks = sp.csr_matrix((np.ones(y.size), (open_groups, y)), shape=(n_out, width))
        return Handle(sp.csr_matrix(select @ h.widened(width) + picks), const)

    def _encode_open(self, builder: MilpBuilder, h: Handle, lo, hi, alive, open_groups, input_bounds,
                     node: str) -> np.ndarray:
        """MIPVerify's encoding of the groups with several live candidates; returns their y columns."""
        y_lo, y_hi = self.interval(input_bounds)
        y = builder.add_cols(y_lo[open_groups], y_hi[open_groups])
        owner_pos, slot = np.nonzero(alive[open_groups])  # owner_pos indexes open_groups
        cand = self._safe[open_groups[owner_pos], slot]
        a = builder.add_cols(np.zeros(cand.size), np.ones(cand.size), integer=True)
        y_of = y[owner_pos]
        # M_i = the largest upper bound among the other live candidates, minus l_i.
        live_hi = np.where(alive[open_groups], self._gather(hi, -np.inf)[open_groups], -np.inf)
        top2 = -np.sort(-live_hi, axis=1)[:, :2]
        other_max = np.where(hi[cand] >= top2[owner_pos, 0], top2[owner_pos, 1], top2[owner_pos, 0])
        big_m = np.maximum(other_max - lo[cand], 0.0)
        z = h.widened(builder.num_cols)[cand]
        c = h.const[cand]
        ones = np.ones(cand.size)
        r1 = builder.add_rows(c, np.full(cand.size, np.inf))  # y - x_i >= c_i
        builder.add_entries(r1, y_of, ones)
        builder.add_expr_rows(r1, z, -1.0)
        r2 = builder.add_rows(np.full(cand.size, -np.inf), c + big_m)  # y - x_i + M a <= c + M
        builder.add_entries(r2, y_of, ones)
        builder.add_expr_rows(r2, z, -1.0)
        builder.add_entries(r2, a, big_m)
        r3 = builder.add_rows(np.ones(open_groups.size), np.ones(open_groups.size))  # sum a = 1
        builder.add_entries(r3[owner_pos], a, ones)
        builder.max_binaries.append((node, open_groups, y, owner_pos, cand, a))
        return y


@dataclass
class MaximumRelaxation:
    """Per group (B or 1, outputs): the leading candidate (largest lower bound), whether it is
    the only live one (then y = x_leader exactly), and y's upper bound otherwise."""

    leader: torch.Tensor  # long
    exact: torch.Tensor  # bool
    upper: torch.Tensor  # 0 where exact

    def repeated(self, reps: int) -> "MaximumRelaxation":
        """Each domain's relaxation `reps` times in a row (one shared by all stays shared)."""
        def rep(t: torch.Tensor) -> torch.Tensor:
            return t if t.shape[0] == 1 else t.repeat_interleave(reps, 0)
        return MaximumRelaxation(rep(self.leader), rep(self.exact), rep(self.upper))


class MaximumBound:
    """The maximum of groups in the bound engine (contract.BoundOp): y >= x_leader below, and
    y = x_leader or y <= max_i u_i above. Not split (its candidates are narrowed by bounds)."""

    linear = False
    splittable = False
    cost = 0.0

    def __init__(self, groups: torch.Tensor, valid: torch.Tensor, n_in: int) -> None:
        self.groups, self.valid, self.n_in = groups, valid, n_in  # (outputs, width) each

    def _gather(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """values[..., groups] with the padding set to `fill`: (..., outputs, width)."""
        picked = values[..., self.groups]
        return torch.where(self.valid, picked, torch.full_like(picked, fill))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return self._gather(xs[0], -torch.inf).amax(-1)

    def interval(self, bounds):
        lo, hi = bounds[0]
        return self._gather(lo, -torch.inf).amax(-1), self._gather(hi, -torch.inf).amax(-1)

    def relax(self, bounds) -> MaximumRelaxation:
        lo, hi = bounds[0]
        g_lo, g_hi = self._gather(lo, -torch.inf), self._gather(hi, -torch.inf)
        # the largest lower bound, ties broken by the larger upper bound (as Maximum.candidates)
        best_lo = g_lo.amax(-1, keepdim=True)
        slot = torch.where(g_lo == best_lo, g_hi, torch.full_like(g_hi, -torch.inf)).argmax(-1)
        leader = self.groups.expand(slot.shape[:-1] + self.groups.shape).gather(-1, slot.unsqueeze(-1)).squeeze(-1)
        alive = self.valid & (g_hi > best_lo)
        alive = alive.scatter(-1, slot.unsqueeze(-1), True)
        exact = alive.sum(-1) == 1
        upper = torch.where(exact, torch.zeros_like(best_lo[..., 0]), g_hi.amax(-1))
        return MaximumRelaxation(leader, exact, upper)

    def uncertain(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """Inputs whose tighter bounds could change the relaxation: the candidates of every group
        with more than one live candidate. Bounds (n,) or per domain (..., n), and so the mask."""
        open_groups = ~self.relax([(lower, upper)]).exact  # (..., outputs)
        member = open_groups.unsqueeze(-1) & self.valid  # (..., outputs, width)
        lead = lower.shape[:-1]
        slots = self.groups.expand(member.shape).reshape(*lead, -1)
        mask = torch.zeros(lower.shape, dtype=torch.uint8, device=lower.device)
        return mask.scatter_reduce(-1, slots, member.reshape(*lead, -1).to(torch.uint8), "amax") > 0

    def backward(self, lam: torch.Tensor, ctx: StepContext) -> Backward:
        r = ctx.relaxation
        neg = lam.clamp(max=0)
        exact = r.exact.unsqueeze(-2).to(lam.dtype)
        onto_leader = lam - neg + neg * exact  # (B, m, outputs)
        const = (neg * (1 - exact) * r.upper.unsqueeze(-2)).sum(-1)
        leader = r.leader.unsqueeze(-2).expand_as(lam)
        part = torch.zeros(lam.shape[:-1] + (self.n_in,), dtype=lam.dtype, device=lam.device)
        part = part.scatter_add(-1, leader, onto_leader)
        magnitude = 0.0
        if ctx.rigorous:
            with torch.no_grad():
                magnitude = const.abs() + (neg.abs() * r.upper.abs().unsqueeze(-2)).sum(-1)
        return Backward([part], const, magnitude)
