"""The fixed data of one branch and bound on a dense ReLU chain (bab/layered.py), and its
bounding passes: the fast path for MLPs, behind the same interface as a search on a bound graph
(graph_problem.py). Dead neurons are dropped from the chain first, which shrinks every matrix.
"""

from __future__ import annotations

import math
import time

import torch

from verifier.bab.crown import Relaxation, backward_bound, default_alpha, pass_seconds
from verifier.bounds.alpha import adam, adam_seconds, ascent_step
from verifier.bounds.walker import EXACT, FAST
from verifier.bab.layered import Layered
from verifier.bab.leaf import leaf_bound, leaf_seconds
from verifier.deadline import Pace, fits
from verifier.ops.relu import ReluBound


def convex_last_layer(rows: torch.Tensor) -> torch.Tensor:
    """(B, n) mask of last-hidden-layer neurons that every row of the spec (rows: (B, m, n),
    the spec's weights on that layer) weighs >= 0. Their ReLU enters the minimised slack
    convexly, so the LP relaxation y >= max(0, z) is exact for them: a domain is decided once
    the other neurons are split (its leaf LP keeps these relaxed), and splitting them is never
    needed. On one hidden layer that is often half the unstable neurons of a label."""
    return (rows >= 0).all(dim=1)


class ChainProblem:
    """The fixed data of one branch and bound: the chain, the specs' rows on its last hidden
    layer (padded to a common row count by repeating a row, which leaves their max unchanged),
    the box and the root bounds of every ReLU layer: (1, n_k) shared by all specs, or (S, n_k)
    one row per spec (bounds valid only where that spec is unproven, see output_bounds.py)."""

    def __init__(self, net: Layered, specs, x_lo, x_hi, lower, upper) -> None:
        # Neurons inactive over the whole box are dropped from the chain: on MLPs most of them
        # are (see benchmarks/RESULTS.md, "Why the defaults are what they are"), and every matrix
        # shrinks.
        lower = [l.reshape(-1, l.shape[-1]) for l in lower]
        upper = [u.reshape(-1, u.shape[-1]) for u in upper]
        keep = [torch.nonzero(~(u <= 0).all(0)).flatten() for u in upper]  # a NaN bound stays
        keep = [k if k.numel() else torch.zeros(1, dtype=torch.long) for k in keep]  # never empty
        self.net, self.x_lo, self.x_hi = net.without(keep), x_lo, x_hi
        n_specs = len(specs)
        self.lower = [l[:, k].expand(n_specs, -1) for l, k in zip(lower, keep)]  # (S, n_k) each
        self.upper = [u[:, k].expand(n_specs, -1) for u, k in zip(upper, keep)]
        specs = [(r[:, keep[-1]], c) for r, c in specs]
        self.m = max(r.shape[0] for r, _ in specs)
        pad = [(torch.cat([r, r[:1].expand(self.m - r.shape[0], -1)]),
                torch.cat([c, c[:1].expand(self.m - c.shape[0])])) for r, c in specs]
        self.rows = torch.stack([r for r, _ in pad])  # (S, m, n_{L-1})
        self.const = torch.stack([c for _, c in pad])  # (S, m)
        self.exact_per_domain: float | None = None  # seconds per domain of the last float64 pass

    def free(self) -> list[torch.Tensor]:
        """Per ReLU layer, (n_k,) bool: the neurons some domain may split or whose slope matters,
        those unstable at the root for some spec (packing.py)."""
        return [ReluBound.uncertain(lo, hi).any(0) for lo, hi in zip(self.lower, self.upper)]

    def clamped(self, spec_ids: torch.Tensor, signs: list[torch.Tensor]) -> tuple[list, list]:
        """Per-domain bounds (B, n_k): its spec's, split neurons clamped to their side."""
        lower, upper = [], []
        for k, s in enumerate(signs):
            lo, hi = self.lower[k][spec_ids], self.upper[k][spec_ids]
            lower.append(torch.where(s < 0, lo.clamp(min=0), lo))
            upper.append(torch.where(s > 0, hi.clamp(max=0), hi))
        return lower, upper

    def pass_seconds(self, domains: int, grad: bool = False, dtype: torch.dtype | None = None) -> float:
        """Expected seconds of one bound pass over `domains` domains: float64 (as the last one
        took, once one has run), with `grad` a float32 optimisation step, or in `dtype`."""
        dtype = dtype or (FAST if grad else EXACT)
        if not grad and dtype == EXACT and self.exact_per_domain is not None:
            return domains * self.exact_per_domain
        return pass_seconds(self.net, self.net.depth, domains * self.m, dtype, grad)

    def bound(self, spec_ids: torch.Tensor, signs, alphas, betas, settings,
              deadline: float = math.inf):
        """Optimise alpha/beta for a batch of domains (float32 Adam steps, as many as fit before
        `deadline` with the final pass: any slopes and multipliers give valid bounds), then
        bound them with the final parameters in float64. Returns the bound per domain, the
        final alphas and betas, the final Bound and the clamped layer bounds."""
        lower, upper = self.clamped(spec_ids, signs)
        rows, const = self.rows[spec_ids], self.const[spec_ids]
        depth = self.net.depth
        alphas = [a.to(FAST).clone().requires_grad_() for a in alphas]
        betas = [b.to(FAST).clone().requires_grad_() for b in betas]
        step, final = self.pass_seconds(len(spec_ids), grad=True), self.pass_seconds(len(spec_ids))
        if settings.steps > 0 and fits(deadline, adam_seconds() + step + final):
            fast_net, fast = self.net.to(FAST), Relaxation.of(lower, upper, FAST)
            f_rows, f_const = rows.to(FAST), const.to(FAST)
            f_lo, f_hi = self.x_lo.to(FAST), self.x_hi.to(FAST)
            f_signs = [s.to(FAST).unsqueeze(1) for s in signs]
            opt = adam([{"params": alphas, "lr": settings.lr_alpha}, {"params": betas, "lr": settings.lr_beta}])
            pace = Pace(deadline, step, final)
            for _ in range(settings.steps):
                if not pace.next():
                    break
                out = backward_bound(fast_net, depth, f_rows, f_const, f_lo, f_hi, fast, alphas, betas,
                                     f_signs, rigorous=False)
                ascent_step(opt, out.value.max(dim=1).values.sum(), alphas, betas)
        alphas = [a.detach() for a in alphas]  # kept in float32 for the children's warm start
        betas = [b.detach() for b in betas]
        began = time.perf_counter()
        with torch.no_grad():
            out = backward_bound(self.net, depth, rows, const, self.x_lo, self.x_hi, Relaxation.of(lower, upper),
                                 [a.to(EXACT) for a in alphas], [b.to(EXACT) for b in betas],
                                 [s.to(EXACT).unsqueeze(1) for s in signs])
        self.exact_per_domain = (time.perf_counter() - began) / len(spec_ids)
        value = out.value.max(dim=1).values  # a disjunct's slack is the max of its rows
        return value, alphas, betas, out, lower, upper

    def slack(self, spec_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The real network's disjunct slack at points x (B, n_0), domain b's spec for row b."""
        with torch.no_grad():
            h = self.net.last_hidden(x)
            return ((self.rows[spec_ids] @ h.unsqueeze(-1)).squeeze(-1) + self.const[spec_ids]).max(1).values

    @property
    def sizes(self) -> list[int]:
        return [l.shape[1] for l in self.lower]

    def default_alphas(self, spec_ids: torch.Tensor) -> list[torch.Tensor]:
        """CROWN's slopes for each spec's root domain, (S, m, n_k) per layer."""
        return [default_alpha(self.lower[k][spec_ids], self.upper[k][spec_ids]).unsqueeze(1).expand(-1, self.m, -1)
                for k in range(self.net.depth)]

    def split_scores(self, k: int, mu, lower, upper, alpha) -> torch.Tensor:
        """(B, n_k) estimated gain of splitting each neuron of layer k; 0 for the last layer's
        neurons that never need a split (`branching.convex_last_layer`)."""
        score = ReluBound.split_scores(mu, lower, upper, alpha)
        if k == self.net.depth - 1:
            score = torch.where(convex_last_layer(mu), torch.zeros_like(score), score)
        return score

    def trial(self, spec_ids, lower: list, upper: list, alphas: list, betas: list, signs: list, reps: int,
              fixes: list) -> torch.Tensor:
        """Float32 bounds (B * reps, m) of each domain repeated `reps` times, with the parents'
        slopes and multipliers and the neurons of `fixes` ((layer k, rows, neurons, active)
        entries) fixed to a side in their rows."""
        relax = Relaxation.of(lower, upper, FAST).repeated(reps)
        for k, rows_of, neurons, active in fixes:
            relax.fix(k, rows_of, neurons, active)
        net = self.net.to(FAST)
        rep = lambda ts: [t.to(FAST).repeat_interleave(reps, 0) for t in ts]  # noqa: E731
        with torch.no_grad():
            return backward_bound(net, net.depth, self.rows[spec_ids].to(FAST).repeat_interleave(reps, 0),
                                  self.const[spec_ids].to(FAST).repeat_interleave(reps, 0),
                                  self.x_lo.to(FAST), self.x_hi.to(FAST), relax, rep(alphas), rep(betas),
                                  [s.to(FAST).unsqueeze(1).repeat_interleave(reps, 0) for s in signs],
                                  rigorous=False).value

    def leaf_seconds(self) -> float:
        return leaf_seconds(self.net)

    def leaf(self, spec: int, signs: list, lower: list, upper: list, time_limit: float):
        """The exact LP bound of a fully split domain (leaf.py)."""
        return leaf_bound(self.net, self.rows[spec], self.const[spec], self.x_lo, self.x_hi, signs, lower, upper,
                          time_limit)
