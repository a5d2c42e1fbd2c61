"""Which neuron a domain splits next.

Two rules, both per domain of a batch, over the split nodes of the search's problem:
- "gap": the free unstable neuron whose relaxation gap, weighted by its coefficient in the
  bound, is largest (a BaBSR-style estimate of what the split would gain; the op's
  `split_scores`);
- "trial" (filtered smart branching): the few best neurons by gap are each split for real
  and both children bounded with the parent's slopes (one cheap float32 pass for all); the
  neuron whose weaker child is strongest wins (rank "weaker"), or whose stronger child is
  (rank "stronger": one child nearly closed takes half the domain off the search; measured
  better on ResNets, see benchmarks/RESULTS.md, "Why the defaults are what they are").
"""

from __future__ import annotations

import numpy as np
import torch


def gap_scores(problem, out, lower: list, upper: list, alphas: list) -> tuple[torch.Tensor, np.ndarray]:
    """(B, total neurons) scores, 0 for neurons that need no split; and the offset of each
    split node in the flat index."""
    scores = [problem.split_scores(k, out.mus[k], lower[k], upper[k], alphas[k]) for k in range(len(lower))]
    offsets = np.cumsum([0] + [s.shape[1] for s in scores])
    if not scores:  # nothing to split (e.g. a network of max-pools only): every domain is a leaf
        return torch.zeros((out.value.shape[0], 0), dtype=out.value.dtype, device=out.value.device), offsets
    return torch.cat(scores, dim=1), offsets


def _unflatten(index: int, offsets: np.ndarray) -> tuple[int, int]:
    k = int(np.searchsorted(offsets, index, side="right") - 1)
    return k, index - int(offsets[k])


def choose_by_gap(problem, out, lower, upper, alphas) -> list[tuple[int, int] | None]:
    flat, offsets = gap_scores(problem, out, lower, upper, alphas)
    if flat.shape[1] == 0:
        return [None] * flat.shape[0]
    best = flat.argmax(dim=1)
    ok = flat.gather(1, best[:, None]).squeeze(1) > 0
    return [_unflatten(j, offsets) if good else None for j, good in zip(best.tolist(), ok.tolist())]


def choose_by_trial(problem, spec_ids, out, lower, upper, alphas, betas, signs,
                    candidates: int = 4, rank: str = "weaker") -> list[tuple[int, int] | None]:
    flat, offsets = gap_scores(problem, out, lower, upper, alphas)
    if flat.shape[1] == 0:
        return [None] * flat.shape[0]
    top = min(candidates, flat.shape[1])
    values, picks = flat.topk(top, dim=1)  # (B, K)
    batch = flat.shape[0]
    reps = 2 * top  # per domain: K candidates x 2 sides, in that order
    rows_of = torch.arange(batch * reps, device=flat.device).reshape(batch, top, 2)
    flat_picks = picks.reshape(-1)
    fixes = []
    for k in range(len(lower)):
        in_layer = (flat_picks >= int(offsets[k])) & (flat_picks < int(offsets[k + 1]))
        if not in_layer.any():
            continue
        neurons = flat_picks[in_layer] - int(offsets[k])
        fixes.append((k, rows_of[..., 0].reshape(-1)[in_layer], neurons, True))
        fixes.append((k, rows_of[..., 1].reshape(-1)[in_layer], neurons, False))
    trial = problem.trial(spec_ids, lower, upper, alphas, betas, signs, reps, fixes)
    children = trial.max(dim=1).values.reshape(batch, top, 2)
    ranked = children.max(dim=2).values if rank == "stronger" else children.min(dim=2).values
    ranked = torch.where(values > 0, ranked, torch.full_like(ranked, -torch.inf))
    choice = ranked.argmax(dim=1)
    ok = values.gather(1, choice[:, None]).squeeze(1) > 0
    chosen = picks.gather(1, choice[:, None]).squeeze(1)
    return [_unflatten(j, offsets) if good else None for j, good in zip(chosen.tolist(), ok.tolist())]
