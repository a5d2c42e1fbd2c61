"""Linear bound propagation on a Layered chain with optimisable slopes (alpha) and split
multipliers (beta): CROWN, alpha-CROWN and beta-CROWN in one backward pass, batched over
subproblems.

This is the dense chain engine's walk (the fast path for MLPs, chain_problem.py); the graph
engine's is bounds/walker.py, and the two agree to 1e-6 on the same bounds (tests/test_engine.py).
The bound of rows @ h_K + c over the input box is found by walking back through the layers,
replacing each ReLU by a linear relaxation: the upper line u(z-l)/(u-l) where the coefficient
is negative and a lower line alpha*z (any alpha in [0, 1]) where it is positive. A ReLU split
by branch and bound (z >= 0 or z <= 0) is linear in its subproblem, and the split constraint
enters through a Lagrange multiplier beta >= 0. For *every* alpha in [0, 1] and beta >= 0 the
result is a valid lower bound, so the parameters may be optimised in any way — here by Adam
steps in float32, which is twice as fast on a CPU — and only the final evaluation, in float64
with an outward slack for rounding, is taken as a bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from verifier.bab.layered import Layered
from verifier.bounds.alpha import adam, adam_seconds, ascent_step
from verifier.bounds.walker import EXACT, FAST, concretise
from verifier.deadline import Pace, fits, product_seconds
from verifier.ops.relu import FAST_LIMIT


@dataclass
class Relaxation:
    """Per ReLU layer, (B, 1, n_k) tensors of the parts of the relaxation that do not depend on
    alpha: the upper line, the slope of stable neurons (1 active, 0 inactive), and the mask of
    unstable ones."""

    up_slope: list[torch.Tensor]
    up_offset: list[torch.Tensor]
    fixed_slope: list[torch.Tensor]
    unstable: list[torch.Tensor]
    extent: list[torch.Tensor]  # max(|l|, |u|): bounds |z_k| and |h_k|, for the rounding slack

    @staticmethod
    def of(lower: list, upper: list, dtype: torch.dtype = EXACT) -> "Relaxation":
        """Computed in `dtype` directly: float32 relaxations only steer optimisation steps, and
        only float64 ones (with `extent`, for the rounding slack) enter bounds that count."""
        up_slope, up_offset, fixed, unstable_masks, extent = [], [], [], [], []
        for l, u in zip(lower, upper):
            if dtype != EXACT:  # keep float32 finite: its relaxation only steers steps
                l, u = l.clamp(-FAST_LIMIT, FAST_LIMIT), u.clamp(-FAST_LIMIT, FAST_LIMIT)
            l, u = l.to(dtype), u.to(dtype)
            unstable = (l < 0) & (u > 0)
            active = (l >= 0).to(dtype)
            slope = torch.where(unstable, u / torch.where(unstable, u - l, 1.0), active)
            up_slope.append(slope.unsqueeze(-2))
            up_offset.append(torch.where(unstable, -slope * l, 0.0).unsqueeze(-2))
            fixed.append(active.unsqueeze(-2))
            unstable_masks.append(unstable.to(dtype).unsqueeze(-2))
            if dtype == EXACT:
                extent.append(torch.maximum(l.abs(), u.abs()).unsqueeze(-2))
        return Relaxation(up_slope, up_offset, fixed, unstable_masks, extent)

    def fix(self, layer: int, rows: torch.Tensor, neurons: torch.Tensor, active: bool) -> None:
        """In place: rows `rows` of layer `layer` get neuron `neurons` fixed to one side, as
        `of` would give for a split neuron (active: identity; inactive: zero)."""
        value = 1.0 if active else 0.0
        for field in (self.up_slope, self.fixed_slope):
            field[layer][rows, 0, neurons] = value
        self.up_offset[layer][rows, 0, neurons] = 0.0
        self.unstable[layer][rows, 0, neurons] = 0.0

    def repeated(self, reps: int) -> "Relaxation":
        """Each subproblem's relaxation repeated `reps` times in a row (copies, safe to patch)."""
        rep = lambda ts: [t.repeat_interleave(reps, 0) for t in ts]  # noqa: E731
        return Relaxation(rep(self.up_slope), rep(self.up_offset), rep(self.fixed_slope), rep(self.unstable),
                          rep(self.extent))


@dataclass
class Bound:
    value: torch.Tensor  # (B, m) lower bounds (slack subtracted when rigorous)
    lam0: torch.Tensor  # (B, m, n_0) coefficients on the input
    mus: list[torch.Tensor]  # per ReLU layer k, (B, m, n_k) coefficients on h_k


def default_alpha(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """CROWN's choice: slope 1 where the ReLU is closer to identity, 0 otherwise."""
    return (upper > -lower).to(lower.dtype)


def backward_bound(net: Layered, upto: int, rows: torch.Tensor, const: torch.Tensor,
                   x_lo: torch.Tensor, x_hi: torch.Tensor, relax: Relaxation,
                   alphas: list, betas: list | None = None, signs: list | None = None,
                   rigorous: bool = True, inject: tuple[int, torch.Tensor] | None = None) -> Bound:
    """Lower bound on rows @ h_upto + const over the box, for a batch of subproblems.

    rows (B, m, n_upto) act on the output of ReLU layer `upto` (the input itself if 0);
    `relax` comes from the pre-activation bounds of layers < upto (split neurons already clamped
    to their side); alphas[k] (B or 1, m, n_k) are lower slopes in [0, 1]; betas[k] (B, m, n_k)
    >= 0 go with signs[k] (B, 1, n_k) in {-1: split active, +1: split inactive, 0: free}.
    `rigorous` adds the outward rounding slack (needed for bounds that count, not for steps).
    `inject` = (j, E) adds E (B, m, n_j) @ z_j to the bounded function: the pre-activation of
    ReLU layer j < upto enters beside the rows (see output_bounds.py).
    """
    if rigorous and len(relax.extent) < upto:
        raise ValueError("a rigorous bound needs a float64 relaxation (Relaxation.of with EXACT)")
    a, c = rows, const
    magnitude = const.abs() if rigorous else None
    mus = []
    for k in reversed(range(upto)):
        mus.append(a)
        if rigorous:
            with torch.no_grad():  # the relaxation's products, over |z_k| <= extent
                magnitude = magnitude + (a.abs() * relax.extent[k]).sum(-1)
        lo_slope = relax.fixed_slope[k] + relax.unstable[k] * alphas[k]
        neg = a.clamp(max=0)
        intercept = (neg * relax.up_offset[k]).sum(-1)
        a = (a - neg) * lo_slope + neg * relax.up_slope[k]
        if betas is not None:
            a = a + betas[k] * signs[k]
        if inject is not None and inject[0] == k:
            a = a + inject[1]
        c = c + intercept + a @ net.biases[k]
        if rigorous:
            with torch.no_grad():  # a @ W_k errs by <= gamma |a| |W_k| entrywise, met by |h_{k-1}|
                h_extent = relax.extent[k - 1] if k > 0 else torch.maximum(x_lo.abs(), x_hi.abs())
                magnitude = (magnitude + intercept.abs() + a.abs() @ net.biases[k].abs()
                             + (a.abs() * (h_extent @ net.abs_weights[k].T)).sum(-1))
        a = a @ net.weights[k]
    mus.reverse()
    return Bound(concretise(a, c, magnitude, x_lo, x_hi), a, mus)


def pass_seconds(net: Layered, upto: int, rows: int, dtype: torch.dtype = EXACT, grad: bool = False) -> float:
    """Expected seconds of one `backward_bound` pass of `rows` rows in all (batch times rows per
    subproblem) from ReLU layer `upto` down to the input; with `grad`, of an optimisation step
    (the pass and its gradient). Its matrix products dominate on wide layers (deadline.py)."""
    products = rows * sum(w.shape[0] * w.shape[1] for w in net.weights[:upto])
    return product_seconds(products * (2 if grad else 1), dtype)


def _layer_rows(net: Layered, k: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows for min z_k[idx] and min -z_k[idx] as functions of h_k's predecessor."""
    w, b = net.weights[k][idx], net.biases[k][idx]
    return torch.cat([w, -w]).unsqueeze(0), torch.cat([b, -b]).unsqueeze(0)


def optimise_alpha(net: Layered, upto: int, rows, const, x_lo, x_hi, lower, upper, steps: int,
                   lr: float = 0.1, deadline: float = float("inf")) -> torch.Tensor:
    """alpha-CROWN for one set of rows (batch 1): Adam on the slopes in float32, then the bound
    of the final slopes in float64; never worse than CROWN's default slopes."""
    m = rows.shape[1]
    total = rows.shape[0] * m
    if not fits(deadline, pass_seconds(net, upto, total)):  # not even CROWN's bound: none (-inf)
        return torch.full(rows.shape[:2], -torch.inf, dtype=EXACT)
    exact = Relaxation.of(lower[:upto], upper[:upto])
    start = [default_alpha(lower[k], upper[k]).unsqueeze(-2).expand(-1, m, -1) for k in range(upto)]
    began = time.perf_counter()
    best = backward_bound(net, upto, rows, const, x_lo, x_hi, exact, start).value
    # Each step must leave time for the final float64 pass, which costs what the first did.
    step, final = pass_seconds(net, upto, total, FAST, grad=True), time.perf_counter() - began
    if steps <= 0 or upto == 0 or not fits(deadline, adam_seconds() + step + final):
        return best
    fast_net, fast = net.to(FAST), Relaxation.of(lower[:upto], upper[:upto], FAST)
    f_rows, f_const, f_lo, f_hi = rows.to(FAST), const.to(FAST), x_lo.to(FAST), x_hi.to(FAST)
    alphas = [a.to(FAST).clone().requires_grad_() for a in start]
    opt = adam([{"params": alphas, "lr": lr}])
    pace = Pace(deadline, step, final)
    taken = 0
    for _ in range(steps):
        if not pace.next():
            break
        value = backward_bound(fast_net, upto, f_rows, f_const, f_lo, f_hi, fast, alphas, rigorous=False).value
        ascent_step(opt, value.sum(), alphas)
        taken += 1
    if taken == 0:
        return best
    with torch.no_grad():
        value = backward_bound(net, upto, rows, const, x_lo, x_hi, exact, [a.to(EXACT) for a in alphas]).value
    return torch.fmax(best, value)


def intermediate_bounds(net: Layered, x_lo, x_hi, lower: list, upper: list, steps: int,
                        deadline: float = float("inf"), only: int | None = None) -> tuple[list, list]:
    """Tighten the pre-activation bounds of every ReLU layer after the first (or of layer
    `only`) with alpha-CROWN, layer by layer (each layer's bounds use the tightened ones before
    it). Inputs and outputs are lists of (1, n_k) tensors; the result never loosens them."""
    lower, upper = list(lower), list(upper)
    for k in range(1, net.depth) if only is None else [only]:
        if time.perf_counter() > deadline:
            break
        idx = torch.nonzero((lower[k][0] < 0) & (upper[k][0] > 0)).flatten()
        if idx.numel() == 0:
            continue
        rows, const = _layer_rows(net, k, idx)
        bound = optimise_alpha(net, k, rows, const, x_lo, x_hi, lower, upper, steps,
                               deadline=deadline)[0]
        n = idx.numel()
        new_lo, new_hi = lower[k].clone(), upper[k].clone()
        new_lo[0, idx] = torch.fmax(new_lo[0, idx], bound[:n])
        new_hi[0, idx] = torch.fmin(new_hi[0, idx], -bound[n:])
        lower[k], upper[k] = new_lo, new_hi
    return lower, upper
