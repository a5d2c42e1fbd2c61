"""The one backward walk of linear bounds over a bound graph (CROWN, alpha-CROWN, beta-CROWN).

A lower bound on rows @ value(start) + const over the input box is found by handing the
coefficients backward through the graph in reverse topological order: each op turns
coefficients on its output into coefficients on its inputs (`BoundOp.backward`), linear ops
exactly, ReLU and Maximum through their relaxations; where a value feeds several ops (residual
branches) the coefficients add up. At the input the linear function is minimised over the box.

For every slope in [0, 1] and every split multiplier >= 0 the result is a valid bound, so the
parameters may be optimised in any way (alpha.py). A bound that counts is computed in float64
with an outward slack covering rounding (`rigorous`, which needs every node's extent); float32
walks only steer optimisation steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from verifier.bounds.graph import BoundGraph, Box
from verifier.ops.contract import StepContext

#: Outward slack on every rigorous bound: relative to the magnitude of the terms (products and
#: sums, with |a| |W| |x| for each product, so cancellation is covered), plus absolute. float64
#: rounding errs by at most n 2^-53 ~ 1e-12 of that magnitude for n < 10^4 terms.
REL_SLACK = 1e-9
ABS_SLACK = 1e-9
FAST = torch.float32  # precision of optimisation steps
EXACT = torch.float64  # precision of bounds that count


@dataclass
class Relaxation:
    """The relaxations of a batch of domains: per relaxed node, what its op's `relax` made from
    its input's bounds; with `extents` (node -> max |value|, (B or 1, n)), a rigorous one."""

    data: dict[int, Any]
    extents: Mapping[int, torch.Tensor] | None = None

    @staticmethod
    def of(graph: BoundGraph, bounds: Mapping[int, Box], extents: Mapping[int, torch.Tensor] | None = None,
           nodes=None) -> "Relaxation":
        """Relaxations of `nodes` (default: every relaxed node whose inputs have bounds), in the
        graph's dtype; `bounds` maps a node to its (lo, hi) values, (B or 1, n)."""
        data = {}
        for r in graph.relaxed if nodes is None else nodes:
            inputs = graph.nodes[r].inputs
            if all(i in bounds for i in inputs):
                boxes = [(bounds[i][0].to(graph.dtype), bounds[i][1].to(graph.dtype)) for i in inputs]
                data[r] = graph.nodes[r].op.relax(boxes)
        if extents is not None and graph.dtype != EXACT:
            raise ValueError("a rigorous relaxation needs a float64 graph")
        return Relaxation(data, extents)

    @property
    def rigorous(self) -> bool:
        return self.extents is not None

    def repeated(self, reps: int) -> "Relaxation":
        """Each domain's relaxation repeated `reps` times in a row (copies, safe to `fix`)."""
        return Relaxation({r: d.repeated(reps) for r, d in self.data.items()},
                          self.extents)


def extents_of(bounds: Mapping[int, Box] | list) -> dict[int, torch.Tensor]:
    """max(|lo|, |hi|) of every node with bounds (for the rounding slack)."""
    items = bounds.items() if isinstance(bounds, Mapping) else enumerate(bounds)
    return {i: torch.maximum(b[0].abs(), b[1].abs()).to(EXACT) for i, b in items if b is not None}


@dataclass
class Bound:
    value: torch.Tensor  # (B, m) lower bounds (slack subtracted when rigorous)
    lam0: torch.Tensor  # (B, m, n_0) coefficients on the input
    mus: dict[int, torch.Tensor]  # split node -> (B, m, n) coefficients on its output


def backward_bound(graph: BoundGraph, start: int, rows: torch.Tensor, const: torch.Tensor,
                   x_lo: torch.Tensor, x_hi: torch.Tensor, relax: Relaxation,
                   alphas: Mapping[int, torch.Tensor] | None = None, betas: Mapping[int, torch.Tensor] | None = None,
                   signs: Mapping[int, torch.Tensor] | None = None,
                   inject: Mapping[int, torch.Tensor] | None = None) -> Bound:
    """Lower bound on rows @ value(start) + const over the box, for a batch of domains.

    rows (B, m, n_start), const (B, m). alphas[r] (B or 1, m, n_r) are the lower slopes of
    split node r in [0, 1] (CROWN's default where absent); betas[r] (B, m, n_r) >= 0 go with
    signs[r] (B, 1, n_r) in {-1: split active, +1: split inactive, 0: free}. `inject` adds
    E (B, m, n_j) @ value(j) for earlier nodes j to the bounded function (output_bounds.py).
    """
    alphas, betas, signs = alphas or {}, betas or {}, signs or {}
    rigorous = relax.rigorous
    pending: dict[int, torch.Tensor] = {start: rows}
    for j, e in (inject or {}).items():
        pending[j] = pending[j] + e if j in pending else e
    c = const
    magnitude = const.abs() if rigorous else None
    mus: dict[int, torch.Tensor] = {}
    for i in range(start, 0, -1):
        lam = pending.pop(i, None)
        if lam is None:
            continue
        node = graph.nodes[i]
        if node.op.splittable:
            mus[i] = lam
        ctx = StepContext(relax.data.get(i), alphas.get(i), betas.get(i), signs.get(i),
                          [relax.extents[j] for j in node.inputs] if rigorous else [], rigorous)
        step = node.op.backward(lam, ctx)
        c = c + step.const
        if rigorous:
            magnitude = magnitude + step.magnitude
        for j, part in zip(node.inputs, step.parts):
            pending[j] = pending[j] + part if j in pending else part
    a = pending.get(0)
    if a is None:  # the start does not depend on the input
        a = torch.zeros(rows.shape[:-1] + (graph.nodes[0].size,), dtype=rows.dtype, device=rows.device)
    return Bound(concretise(a, c, magnitude, x_lo, x_hi), a, mus)


def concretise(a: torch.Tensor, c: torch.Tensor, magnitude: torch.Tensor | None, x_lo, x_hi) -> torch.Tensor:
    """min over the box of a @ x + c, minus the outward rounding slack when `magnitude` (the sum
    of |terms| so far) is given; NaN (e.g. slopes overflowed in float32 steps) proves nothing:
    -inf. The box is one (n0,) for every domain, or one (B, n0) per domain (input splitting).
    The last step of both walks (this one and the chain engine's, bab/crown.py)."""
    centre, radius = (x_lo + x_hi) / 2, (x_hi - x_lo) / 2
    value = c + _dot(a, centre) - _dot(a.abs(), radius)
    if magnitude is not None:
        with torch.no_grad():
            magnitude = magnitude + _dot(a.abs(), centre.abs() + radius)
        value = value - REL_SLACK * magnitude - ABS_SLACK
    return torch.where(torch.isnan(value), torch.full_like(value, -torch.inf), value)


def _dot(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """a (B, m, n0) times a shared v (n0,) or a per-domain v (B, n0): (B, m)."""
    if v.dim() == 1:
        return a @ v
    return (a @ v.unsqueeze(-1)).squeeze(-1)


def minimiser(lam0: torch.Tensor, x_lo: torch.Tensor, x_hi: torch.Tensor) -> torch.Tensor:
    """The corner of the box where the relaxed bound is attained (a candidate counterexample);
    boxes as in `concretise`."""
    if x_lo.dim() == 2:
        x_lo, x_hi = x_lo.unsqueeze(1), x_hi.unsqueeze(1)
    return torch.where(lam0 >= 0, x_lo, x_hi)


def walk_cost(graph: BoundGraph, start: int) -> float:
    """Multiply-adds per bound row of one walk from `start` (for time estimates)."""
    return sum(graph.nodes[i].op.cost for i in graph.ancestors[start] | {start} if i > 0) + graph.nodes[0].size
