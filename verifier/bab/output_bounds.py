"""Layer bounds under a disjunct's own negation ("output constraints"), for its search alone.

To prove a disjunct (max_r s_r(x) > tol for every x in the box) the pre-activation bounds
need to hold only where it is not yet proven, on U = {x in the box: s_r(x) <= tol for all r}.
On U, for any lambda >= 0, z_i(x) >= z_i(x) + sum_r lambda_r (s_r(x) - tol); so a lower bound
of that sum over the whole box (one backward pass from the output, with z_i entering at its
layer: `crown.backward_bound(inject=...)`) bounds z_i on U, and lambda is optimised with the
slopes. At lambda = 0 it is the plain bound, so nothing is lost.

What such bounds prove: a bound v > tol on the disjunct computed with them means U is empty,
i.e. the disjunct holds with slack > tol everywhere; a bound v <= tol means the least slack is
at least v, or above tol. They are never valid for another disjunct, nor as a number for the
slack's exact minimum (so not in exact mode), and crossed bounds (lower > upper) prove U empty.
`RunState.prove_constrained` records such a bound accordingly (for both engines; the graph
engine's form of this module is graph_output_bounds.py).

The constraint bites only once the disjunct is nearly proven: after refinement these bounds
lift the disjuncts' alpha-CROWN bounds markedly, at the root they gain little (measured on
mnistfc 256x4, see benchmarks/RESULTS.md, "Why the defaults are what they are").
"""

from __future__ import annotations

import time

import torch

from verifier.bab.crown import Relaxation, backward_bound, default_alpha, pass_seconds
from verifier.bounds.alpha import adam, adam_seconds, ascent_step
from verifier.bounds.walker import ABS_SLACK, EXACT, FAST, REL_SLACK
from verifier.bab.layered import Layered
from verifier.deadline import Pace, fits


def _tighten_layer(net: Layered, k: int, rows: torch.Tensor, const: torch.Tensor, x_lo, x_hi,
                   lower: list, upper: list, steps: int, lr: float,
                   deadline: float = float("inf")) -> tuple[list, list]:
    """Layer k's unstable neurons bounded on U (module docstring); rows (m, n_L), const (m,).
    At lambda = 0 the bound is the plain one, so a layer is left as it is unless a step and the
    final float64 pass fit before `deadline` (on a wide CNN's layer one step takes seconds; see
    benchmarks/RESULTS.md, "Why the defaults are what they are"), and steps stop when the next
    would not leave time for that pass."""
    idx = torch.nonzero((lower[k][0] < 0) & (upper[k][0] > 0)).flatten()
    n = idx.numel()
    if n == 0:
        return lower, upper
    depth, m = net.depth, rows.shape[0]
    step_cost, final_cost = pass_seconds(net, depth, 2 * n, FAST, grad=True), pass_seconds(net, depth, 2 * n)
    if not fits(deadline, adam_seconds() + step_cost + final_cost):
        return lower, upper
    inject = torch.zeros((1, 2 * n, lower[k].shape[1]), dtype=EXACT)
    inject[0, torch.arange(n), idx] = 1.0
    inject[0, n + torch.arange(n), idx] = -1.0
    fast_net, fast = net.to(FAST), Relaxation.of(lower, upper, FAST)
    f_rows, f_const, f_lo, f_hi, f_inject = (t.to(FAST) for t in (rows, const, x_lo, x_hi, inject))
    lam = torch.zeros((1, 2 * n, m), dtype=FAST, requires_grad=True)
    alphas = [default_alpha(lower[j], upper[j]).to(FAST).unsqueeze(-2).expand(-1, 2 * n, -1).clone().requires_grad_()
              for j in range(depth)]
    opt = adam([{"params": alphas, "lr": 0.1}, {"params": [lam], "lr": lr}])
    pace = Pace(deadline, step_cost, final_cost)
    for _ in range(steps):
        if not pace.next():
            break
        value = backward_bound(fast_net, depth, lam @ f_rows, (lam @ f_const.unsqueeze(-1)).squeeze(-1), f_lo, f_hi,
                               fast, alphas, rigorous=False, inject=(k, f_inject)).value
        ascent_step(opt, value.sum(), alphas, [lam])
    with torch.no_grad():
        lam64 = lam.detach().to(EXACT)
        exact = Relaxation.of(lower, upper)
        bound = backward_bound(net, depth, lam64 @ rows, (lam64 @ const.unsqueeze(-1)).squeeze(-1), x_lo, x_hi,
                               exact, [a.detach().to(EXACT) for a in alphas], inject=(k, inject)).value[0]
        # backward_bound's slack covers the rows it is handed; forming lambda @ rows (and its
        # constant) rounds too, by at most ~m 2^-53 of |lambda| |rows| |h_L| (+ |lambda| |const|).
        h_extent = exact.extent[depth - 1].reshape(-1)
        combine = ((lam64.abs() @ rows.abs()) @ h_extent + lam64.abs() @ const.abs())[0]
        bound = bound - REL_SLACK * combine - ABS_SLACK
    lower, upper = list(lower), list(upper)
    new_lo, new_hi = lower[k].clone(), upper[k].clone()
    new_lo[0, idx] = torch.fmax(new_lo[0, idx], bound[:n])
    new_hi[0, idx] = torch.fmin(new_hi[0, idx], -bound[n:])
    lower[k], upper[k] = new_lo, new_hi
    return lower, upper


def constrained_bounds(net: Layered, rows: torch.Tensor, const: torch.Tensor, tolerance: float, x_lo, x_hi,
                       lower: list, upper: list, layers: int, rounds: int, steps: int = 30, lr: float = 0.1,
                       deadline: float = float("inf")) -> tuple[list, list]:
    """Bounds of the last `layers` ReLU layers on U = {x in box: rows @ h_L + const <= tolerance}
    (module docstring), in `rounds` passes from the earliest of them on (a pass narrows the
    relaxations the next one passes through). Inputs and outputs: lists of (1, n_k) tensors
    valid on U; the result never loosens them. The caller checks for crossed bounds."""
    shifted = const - tolerance
    for _ in range(rounds):
        for k in range(max(net.depth - layers, 0), net.depth):
            if time.perf_counter() > deadline:
                return lower, upper
            lower, upper = _tighten_layer(net, k, rows, shifted, x_lo, x_hi, lower, upper, steps, lr, deadline)
            if crossed(lower, upper):  # U is empty: nothing more to learn
                return lower, upper
    return lower, upper


def crossed(lower: list, upper: list) -> bool:
    """True if some neuron's bounds cross: the set they were computed on is empty."""
    return any(bool((l > u).any()) for l, u in zip(lower, upper))
