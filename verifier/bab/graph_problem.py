"""The fixed data of one branch and bound on a bound graph, and its bounding passes.

A search bounds rows @ value(start) + const (one set of rows per spec: a property's disjuncts on
the output node, or a layer's neuron bounds on a pre-activation node) over domains that fix some
ReLUs of the split nodes before `start` to a side. Every other relaxed node (a Maximum, a ReLU
the start does not depend on) keeps its root bounds. Domain tensors are lists aligned with
`target.splits`: signs (B, n_k), slopes and multipliers (B, m, n_k).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from verifier.bounds.alpha import (adam, adam_seconds, ascent_step, chunk_entries, pass_seconds, record_pass,
                                   split_ancestors)
from verifier.bounds.graph import BoundGraph, Box
from verifier.bounds.walker import EXACT, FAST, Bound, Relaxation, backward_bound, extents_of
from verifier.deadline import Pace, fits


@dataclass
class GraphTarget:
    """What a search on a graph is about: its start node, and the root bounds of every node
    ((1, n) boxes of the float64 graph) that its split nodes' bounds do not replace."""

    graph: BoundGraph
    start: int
    boxes: dict[int, Box]
    splits: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.splits = split_ancestors(self.graph, self.start)

    @property
    def depth(self) -> int:
        return len(self.splits)

    def problem(self, specs, x_lo, x_hi, lower: list, upper: list) -> "GraphProblem":
        return GraphProblem(self, specs, x_lo, x_hi, lower, upper)

    def __getstate__(self) -> dict:
        """Pickled for helper processes as the Network and its device (a compiled graph is
        rebuilt there from the Network's ops)."""
        return {"net": self.graph.net, "device": str(self.graph.device), "start": self.start, "boxes": self.boxes}

    def __setstate__(self, state: dict) -> None:
        from verifier.bounds.graph import compiled

        self.graph = compiled(state["net"], state["device"], EXACT)
        self.start, self.boxes = state["start"], state["boxes"]
        self.splits = split_ancestors(self.graph, self.start)


class GraphProblem:
    """One search's specs (rows on the start node, padded to a common row count by repeating a
    row, which leaves their max unchanged), box and root bounds of the split nodes' inputs:
    (1, n_k) shared by all specs, or (S, n_k) one row per spec."""

    def __init__(self, target: GraphTarget, specs, x_lo, x_hi, lower: list, upper: list) -> None:
        self.target, self.graph = target, target.graph
        self.fast_graph = self.graph.to(FAST)
        self.splits, self.start = target.splits, target.start
        self.pre = [self.graph.pre(s) for s in self.splits]
        self.ops = [self.graph.nodes[s].op for s in self.splits]
        self.x_lo, self.x_hi = x_lo, x_hi
        n_specs = len(specs)
        self.lower = [l.reshape(-1, l.shape[-1]).expand(n_specs, -1) for l in lower]
        self.upper = [u.reshape(-1, u.shape[-1]).expand(n_specs, -1) for u in upper]
        self.m = max(r.shape[0] for r, _ in specs)
        pad = [(torch.cat([r, r[:1].expand(self.m - r.shape[0], -1)]),
                torch.cat([c, c[:1].expand(self.m - c.shape[0])])) for r, c in specs]
        self.rows = torch.stack([r for r, _ in pad])  # (S, m, n_start)
        self.const = torch.stack([c for _, c in pad])  # (S, m)
        # Root boxes of everything (split inputs at their loosest: each spec's bounds lie inside
        # their union), for the rounding slack's extents and the fixed relaxations.
        fixed = dict(target.boxes)
        for p, l, u in zip(self.pre, self.lower, self.upper):
            fixed[p] = (l.min(0, keepdim=True).values, u.max(0, keepdim=True).values)
        self.fixed = fixed
        self.extents = extents_of(self.graph.interval(x_lo, x_hi, fixed, upto=self.start))
        others = [r for r in self.graph.relaxed if r not in self.splits and r in self.graph.ancestors[self.start]]
        self.others = others
        width = sum(self.graph.nodes[i].size for i in self.graph.ancestors[self.start] | {self.start})
        self.chunk_domains = max(1, chunk_entries(self.graph.device) // (self.m * width))

    @property
    def sizes(self) -> list[int]:
        return [l.shape[1] for l in self.lower]

    def free(self) -> list[torch.Tensor]:
        """Per split node, (n_k,) bool: the entries whose side some domain may fix or whose slope
        matters, those uncertain at the root for some spec (packing.py)."""
        return [op.uncertain(lo, hi).any(0) for op, lo, hi in zip(self.ops, self.lower, self.upper)]

    def clamped(self, spec_ids: torch.Tensor, signs: list[torch.Tensor]) -> tuple[list, list]:
        """Per-domain bounds (B, n_k): its spec's, split neurons clamped to their side."""
        lower, upper = [], []
        for op, lo, hi, s in zip(self.ops, self.lower, self.upper, signs):
            l, u = op.clamp(lo[spec_ids], hi[spec_ids], s)
            lower.append(l)
            upper.append(u)
        return lower, upper

    def relaxation(self, lower: list, upper: list, dtype: torch.dtype) -> Relaxation:
        graph = self.graph if dtype == EXACT else self.fast_graph
        boxes = dict(self.fixed)
        boxes.update({p: (l, u) for p, l, u in zip(self.pre, lower, upper)})
        return Relaxation.of(graph, boxes, self.extents if dtype == EXACT else None,
                             nodes=self.splits + self.others)

    def walk(self, rows, const, relax: Relaxation, alphas: list, betas: list | None = None,
             signs: list | None = None) -> Bound:
        """The backward walk with list-aligned parameters; mus come back as a list too."""
        graph = self.graph if relax.rigorous else self.fast_graph
        x_lo, x_hi = self.x_lo.to(graph.dtype), self.x_hi.to(graph.dtype)
        keyed = lambda ts: None if ts is None else dict(zip(self.splits, ts))  # noqa: E731
        out = backward_bound(graph, self.start, rows, const, x_lo, x_hi, relax, keyed(alphas), keyed(betas),
                             keyed(signs))
        zeros = lambda s: torch.zeros(rows.shape[:2] + (graph.nodes[s].size,), dtype=rows.dtype, device=rows.device)  # noqa: E731
        return Bound(out.value, out.lam0, [out.mus[s] if s in out.mus else zeros(s) for s in self.splits])

    def pass_seconds(self, domains: int, grad: bool = False, dtype: torch.dtype | None = None) -> float:
        """Expected seconds of one bound pass over `domains` domains: float64, with `grad` a
        float32 optimisation step, or a float32 trial pass (dtype FAST); as the last such walk
        from this start took (alpha.pass_seconds)."""
        return pass_seconds(self.graph, self.start, domains * self.m, dtype or (FAST if grad else EXACT), grad)

    def _record(self, domains: int, began: float, dtype: torch.dtype = EXACT, grad: bool = False,
                walks: int = 1) -> None:
        """Note the time of the pass(es) over `domains` domains begun at `began` (pass_seconds)."""
        record_pass(self.graph, self.start, domains * self.m, began, dtype, grad, walks)

    def default_alphas(self, spec_ids: torch.Tensor) -> list[torch.Tensor]:
        lower, upper = [l[spec_ids] for l in self.lower], [u[spec_ids] for u in self.upper]
        return [(u > -l).to(FAST).unsqueeze(1).expand(-1, self.m, -1) for l, u in zip(lower, upper)]

    def chunks(self, count: int, reps: int = 1) -> list[slice]:
        """Slices of a batch of `count` domains (each walked `reps` times) that keep every walk
        within chunk_entries coefficients per node: domains are independent, so a batch bounded
        chunk by chunk gives the same bounds, and a CNN's round stays within memory."""
        per = max(1, self.chunk_domains // reps)
        return [slice(i, min(i + per, count)) for i in range(0, count, per)]

    def bound(self, spec_ids: torch.Tensor, signs, alphas, betas, settings, deadline: float = math.inf):
        """Optimise slopes and multipliers for a batch of domains (float32 Adam steps, as many as
        fit before `deadline` with the final pass: any values give valid bounds), then bound them
        with the final parameters in float64, chunk by chunk (`chunks`). Returns the bound per
        domain, the final alphas and betas, the final Bound (its mus in float32, for branching)
        and the clamped bounds."""
        chunks = self.chunks(len(spec_ids))
        parts = []
        for c in chunks:  # each chunk's steps leave time for the later chunks' float64 passes
            later = self.pass_seconds(len(spec_ids) - c.stop)
            parts.append(self._bound_chunk(spec_ids[c], [t[c] for t in signs], [t[c] for t in alphas],
                                           [t[c] for t in betas], settings, deadline - later))
        if len(parts) == 1:
            return parts[0]
        cat = lambda i: torch.cat([p[i] for p in parts])  # noqa: E731
        cat_list = lambda i: [torch.cat(ts) for ts in zip(*(p[i] for p in parts))]  # noqa: E731
        outs = [p[3] for p in parts]
        out = Bound(torch.cat([o.value for o in outs]), torch.cat([o.lam0 for o in outs]),
                    [torch.cat(ts) for ts in zip(*(o.mus for o in outs))])
        return cat(0), cat_list(1), cat_list(2), out, cat_list(4), cat_list(5)

    def _bound_chunk(self, spec_ids: torch.Tensor, signs, alphas, betas, settings, deadline: float):
        lower, upper = self.clamped(spec_ids, signs)
        rows, const = self.rows[spec_ids], self.const[spec_ids]
        alphas = [a.to(FAST).clone().requires_grad_() for a in alphas]
        betas = [b.to(FAST).clone().requires_grad_() for b in betas]
        step, final = self.pass_seconds(len(spec_ids), grad=True), self.pass_seconds(len(spec_ids))
        if settings.steps > 0 and self.splits and fits(deadline, adam_seconds() + step + final):
            fast = self.relaxation(lower, upper, FAST)
            f_rows, f_const = rows.to(FAST), const.to(FAST)
            f_signs = [s.to(FAST).unsqueeze(1) for s in signs]
            opt = adam([{"params": alphas, "lr": settings.lr_alpha}, {"params": betas, "lr": settings.lr_beta}])
            pace = Pace(deadline, step, final)
            taken, began = 0, time.perf_counter()
            for _ in range(settings.steps):
                if not pace.next():
                    break
                out = self.walk(f_rows, f_const, fast, alphas, betas, f_signs)
                ascent_step(opt, out.value.max(dim=1).values.sum(), alphas, betas)
                taken += 1
            if taken:
                self._record(len(spec_ids), began, FAST, grad=True, walks=taken)
        alphas = [a.detach() for a in alphas]  # kept in float32 for the children's warm start
        betas = [b.detach() for b in betas]
        began = time.perf_counter()
        with torch.no_grad():
            out = self.walk(rows, const, self.relaxation(lower, upper, EXACT), [a.to(EXACT) for a in alphas],
                            [b.to(EXACT) for b in betas], [s.to(EXACT).unsqueeze(1) for s in signs])
        self._record(len(spec_ids), began)
        value = out.value.max(dim=1).values  # a disjunct's slack is the max of its rows
        out = Bound(out.value, out.lam0, [mu.to(FAST) for mu in out.mus])
        return value, alphas, betas, out, lower, upper

    def trial(self, spec_ids, lower: list, upper: list, alphas: list, betas: list, signs: list, reps: int,
              fixes: list) -> torch.Tensor:
        """Float32 bounds (B * reps, m) of each domain repeated `reps` times, with the parents'
        slopes and multipliers and the neurons of `fixes` ((split k, rows, neurons, active)
        entries) fixed to a side in their rows; chunk by chunk (`chunks`)."""
        values = []
        for c in self.chunks(len(spec_ids), reps):
            first, last = c.start * reps, c.stop * reps
            local = []
            for k, rows_of, neurons, active in fixes:
                inside = (rows_of >= first) & (rows_of < last)
                if inside.any():
                    local.append((k, rows_of[inside] - first, neurons[inside], active))
            pick = lambda ts: [t[c] for t in ts]  # noqa: E731
            values.append(self._trial_chunk(spec_ids[c], pick(lower), pick(upper), pick(alphas), pick(betas),
                                            pick(signs), reps, local))
        return torch.cat(values)

    def _trial_chunk(self, spec_ids, lower, upper, alphas, betas, signs, reps: int, fixes: list) -> torch.Tensor:
        began = time.perf_counter()
        try:
            return self._trial_walk(spec_ids, lower, upper, alphas, betas, signs, reps, fixes)
        finally:
            self._record(len(spec_ids) * reps, began, FAST)

    def _trial_walk(self, spec_ids, lower, upper, alphas, betas, signs, reps: int, fixes: list) -> torch.Tensor:
        relax = self.relaxation(lower, upper, FAST).repeated(reps)
        for k, rows_of, neurons, active in fixes:
            relax.data[self.splits[k]].fix(rows_of, neurons, active)
        rep = lambda ts: [t.to(FAST).repeat_interleave(reps, 0) for t in ts]  # noqa: E731
        with torch.no_grad():
            return self.walk(self.rows[spec_ids].to(FAST).repeat_interleave(reps, 0),
                             self.const[spec_ids].to(FAST).repeat_interleave(reps, 0), relax, rep(alphas),
                             rep(betas), [s.to(FAST).unsqueeze(1).repeat_interleave(reps, 0) for s in signs]).value

    def split_scores(self, k: int, mu, lower, upper, alpha) -> torch.Tensor:
        """(B, n_k) estimated gain of splitting each neuron of split k (its op's rule)."""
        return self.ops[k].split_scores(mu, lower, upper, alpha)

    def slack(self, spec_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The real network's disjunct slack at points x (B, n_0), domain b's spec for row b."""
        with torch.no_grad():
            v = self.graph.forward(x.to(EXACT), self.start)
            return ((self.rows[spec_ids] @ v.unsqueeze(-1)).squeeze(-1) + self.const[spec_ids]).max(1).values

    def leaf_seconds(self) -> float:
        from verifier.bab.graph_leaf import leaf_seconds

        return leaf_seconds(self)

    def leaf(self, spec: int, signs: list, lower: list, upper: list, time_limit: float):
        from verifier.bab.graph_leaf import leaf_bound

        return leaf_bound(self, spec, signs, lower, upper, time_limit)


def spec_rows(C: np.ndarray, d: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A disjunct's rows C @ y - d on the output node, as float64 tensors."""
    return torch.as_tensor(np.asarray(C, dtype=np.float64)), -torch.as_tensor(np.asarray(d, dtype=np.float64))
