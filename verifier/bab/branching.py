"""Which ReLU a domain splits next.

Two rules, both per domain of a batch:
- "gap": the free unstable neuron whose relaxation gap, weighted by its coefficient in the
  bound, is largest (a BaBSR-style estimate of what the split would gain);
- "trial" (filtered smart branching): the few best neurons by gap are each split for real
  and both children bounded with the parent's slopes (one cheap float32 pass for all); the
  neuron whose weaker child is strongest wins.
"""

from __future__ import annotations

import numpy as np
import torch

from verifier.bab.crown import FAST, Relaxation, backward_bound


def gap_scores(out, lower: list, upper: list, alphas: list) -> tuple[torch.Tensor, np.ndarray]:
    """(B, total neurons) scores, 0 for neurons that are not free and unstable, or that never
    need a split (see `convex_last_layer`); and the offset of each layer in the flat index."""
    scores = []
    last = len(lower) - 1
    for k in range(len(lower)):
        l, u = lower[k], upper[k]
        unstable = (l < 0) & (u > 0)
        width = torch.where(unstable, u - l, torch.ones_like(u))
        mu = out.mus[k]
        upper_gap = (u * -l / width).unsqueeze(1)
        a = alphas[k]
        lower_gap = torch.maximum((1 - a) * u.unsqueeze(1), -a * l.unsqueeze(1))
        score = (mu.clamp(max=0).neg() * upper_gap + mu.clamp(min=0) * lower_gap).sum(1)
        if k == last:
            unstable = unstable & ~convex_last_layer(mu)
        scores.append(torch.where(unstable, score + 1e-12, torch.zeros_like(score)))
    offsets = np.cumsum([0] + [s.shape[1] for s in scores])
    return torch.cat(scores, dim=1), offsets


def convex_last_layer(rows: torch.Tensor) -> torch.Tensor:
    """(B, n) mask of last-hidden-layer neurons that every row of the spec (rows: (B, m, n),
    the spec's weights on that layer) weighs >= 0. Their ReLU enters the minimised slack
    convexly, so the LP relaxation y >= max(0, z) is exact for them: a domain is decided once
    the other neurons are split (its leaf LP keeps these relaxed), and splitting them is never
    needed. On one hidden layer that is often half the unstable neurons of a label."""
    return (rows >= 0).all(dim=1)


def _unflatten(index: int, offsets: np.ndarray) -> tuple[int, int]:
    k = int(np.searchsorted(offsets, index, side="right") - 1)
    return k, index - int(offsets[k])


def choose_by_gap(out, lower, upper, alphas) -> list[tuple[int, int] | None]:
    flat, offsets = gap_scores(out, lower, upper, alphas)
    best = flat.argmax(dim=1)
    ok = flat.gather(1, best[:, None]).squeeze(1) > 0
    return [_unflatten(j, offsets) if good else None for j, good in zip(best.tolist(), ok.tolist())]


def choose_by_trial(problem, spec_ids, out, lower, upper, alphas, betas, signs,
                    candidates: int = 4) -> list[tuple[int, int] | None]:
    flat, offsets = gap_scores(out, lower, upper, alphas)
    top = min(candidates, flat.shape[1])
    values, picks = flat.topk(top, dim=1)  # (B, K)
    batch = flat.shape[0]
    reps = 2 * top  # per domain: K candidates x 2 sides, in that order
    relax = Relaxation.of(lower, upper, FAST).repeated(reps)
    rows_of = torch.arange(batch * reps).reshape(batch, top, 2)
    flat_picks = picks.reshape(-1)
    for k in range(len(lower)):
        in_layer = (flat_picks >= int(offsets[k])) & (flat_picks < int(offsets[k + 1]))
        if not in_layer.any():
            continue
        neurons = flat_picks[in_layer] - int(offsets[k])
        relax.fix(k, rows_of[..., 0].reshape(-1)[in_layer], neurons, active=True)
        relax.fix(k, rows_of[..., 1].reshape(-1)[in_layer], neurons, active=False)
    net = problem.net.to(FAST)
    with torch.no_grad():
        trial = backward_bound(
            net, net.depth, problem.rows[spec_ids].to(FAST).repeat_interleave(reps, 0),
            problem.const[spec_ids].to(FAST).repeat_interleave(reps, 0),
            problem.x_lo.to(FAST), problem.x_hi.to(FAST), relax,
            [a.to(FAST).repeat_interleave(reps, 0) for a in alphas],
            [b.to(FAST).repeat_interleave(reps, 0) for b in betas],
            [s.to(FAST).unsqueeze(1).repeat_interleave(reps, 0) for s in signs], rigorous=False)
    weaker = trial.value.max(dim=1).values.reshape(batch, top, 2).min(dim=2).values
    weaker = torch.where(values > 0, weaker, torch.full_like(weaker, -torch.inf))
    choice = weaker.argmax(dim=1)
    ok = values.gather(1, choice[:, None]).squeeze(1) > 0
    chosen = picks.gather(1, choice[:, None]).squeeze(1)
    return [_unflatten(j, offsets) if good else None for j, good in zip(chosen.tolist(), ok.tolist())]
