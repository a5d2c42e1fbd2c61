"""alpha-CROWN over a bound graph: optimised slopes for one set of bound rows, and the bounds of
every relaxed node's input (ReLU pre-activations, Maximum candidates) tightened in turn.

Any slopes in [0, 1] give valid bounds, so they are optimised by Adam steps in float32 (twice
as fast on a CPU) and only the final walk, in float64 with the rounding slack, is taken as a
bound; it is never worse than CROWN's default slopes. Every loop keeps the deadline: a step
starts only if it and the final float64 walk end in time (deadline.Pace).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Mapping

import torch

from verifier.bounds.graph import BoundGraph, Box
from verifier.bounds.walker import EXACT, FAST, Relaxation, backward_bound, extents_of, walk_cost
from verifier.deadline import Pace, fits, product_seconds, since

#: Entries of the coefficient tensors one walk may hold per node on an accelerator (2^23 float64:
#: 64 MB) and on a CPU (2^21: 16 MB): the rows of a wide layer's bounds, and a search's domains,
#: are walked in chunks of at most this many entries. A CPU walks big tensors slower per row
#: (out of cache), so its chunks are smaller (measured on a CIFAR CNN, see benchmarks/RESULTS.md,
#: "Why the defaults are what they are").
CHUNK_ENTRIES = 1 << 23
CPU_CHUNK_ENTRIES = 1 << 21


def chunk_entries(device: torch.device | str) -> int:
    """Entries per node one walk may hold on `device` (CHUNK_ENTRIES)."""
    return CPU_CHUNK_ENTRIES if torch.device(device).type == "cpu" else CHUNK_ENTRIES

#: Seconds the first optimiser of a process may take to create: torch.optim then imports
#: torch._dynamo, inside whichever run comes first; this leaves room over the measured import
#: time (benchmarks/RESULTS.md, "Why the defaults are what they are").
FIRST_OPTIMISER_SECONDS = 3.0


def adam_seconds() -> float:
    """Expected seconds to create an optimiser here and now (see FIRST_OPTIMISER_SECONDS)."""
    return 0.0 if "torch._dynamo" in sys.modules else FIRST_OPTIMISER_SECONDS


def adam(groups) -> torch.optim.Adam:
    """Adam over slopes and multipliers: the fused kernel where torch has it (much faster than the
    foreach one on these many small tensors, measured on a CPU: benchmarks/RESULTS.md, "Why the
    defaults are what they are"), else the foreach one."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups, foreach=True)


class LightAdam:
    """Adam (torch.optim.Adam's update, default betas) in a few tensor ops, for searches that
    must not pay torch.optim's first construction: it imports torch._dynamo, about a second on
    this machine, longer than most input-split searches take in all (ACAS Xu: median 0.1 s)."""

    def __init__(self, groups, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = [(p, g["lr"]) for g in groups for p in g["params"]]
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p, _ in self.params]
        self.betas, self.eps, self.steps = betas, eps, 0

    def zero_grad(self) -> None:
        for p, _ in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.steps, 1 - b2 ** self.steps
        for (p, lr), (m, v) in zip(self.params, self.moments):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr / c1)


def ascent_step(opt: torch.optim.Optimizer, objective: torch.Tensor, slopes, multipliers=()) -> None:
    """One optimiser step raising `objective`, then back into the set where every value gives a
    valid bound: slopes in [0, 1], multipliers (split betas, output-constraint lambdas) >= 0."""
    opt.zero_grad()
    (-objective).backward()
    opt.step()
    with torch.no_grad():
        for a in slopes:
            a.clamp_(0.0, 1.0)
        for b in multipliers:
            b.clamp_(min=0.0)


def _timing_key(start: int, dtype: torch.dtype, grad: bool) -> tuple:
    """A walk's key in BoundGraph.timings: its start, its kind ("step": a float32 Adam step,
    the walk and its gradient; "exact": a float64 walk; "trial": a float32 walk without
    gradient) and torch's thread count (a walk on one thread is not one on two)."""
    kind = "step" if grad else "exact" if dtype == EXACT else "trial"
    return start, kind, torch.get_num_threads()


def pass_seconds(graph: BoundGraph, start: int, rows: int, dtype: torch.dtype = EXACT, grad: bool = False) -> float:
    """Expected seconds of one walk of `rows` rows in all from `start`; with `grad`, of an
    optimisation step (the walk and its gradient). As the last such walk took per row, once
    one has run (`record_pass`), for up to twice its rows; estimated from the matrix products
    before, which miss a CPU's convolutions and elementwise work by several times. A walk of
    many more rows than the measured one takes the larger of the two: a CPU's time per row grows
    with the rows (out of cache). Both measured on a CIFAR CNN, see benchmarks/RESULTS.md, "Why
    the defaults are what they are"."""
    estimate = lambda: product_seconds(rows * walk_cost(graph, start) * (2 if grad else 1), dtype)  # noqa: E731
    measured = graph.timings.get(_timing_key(start, dtype, grad))
    if measured is None:
        return estimate()
    rows_seen, per_row = measured
    if rows <= 2 * rows_seen:
        return rows * per_row
    return max(rows * per_row, estimate())


def record_pass(graph: BoundGraph, start: int, rows: int, began: float, dtype: torch.dtype = EXACT,
                grad: bool = False, walks: int = 1) -> float:
    """Note that `walks` walks of `rows` rows each from `start`, begun at perf_counter()
    `began`, are done (for `pass_seconds`); returns the seconds one took."""
    seconds = since(began, graph.device) / max(walks, 1)
    graph.timings[_timing_key(start, dtype, grad)] = (rows, seconds / max(rows, 1))
    return seconds


def split_ancestors(graph: BoundGraph, start: int) -> list[int]:
    """The split nodes a walk from `start` passes."""
    return [s for s in graph.splits if s in graph.ancestors[start]]


def optimise_alpha(graph: BoundGraph, start: int, rows: torch.Tensor, const: torch.Tensor, x_lo, x_hi,
                   bounds: Mapping[int, Box], steps: int, lr: float = 0.1,
                   deadline: float = math.inf, light: bool = False) -> torch.Tensor:
    """Lower bounds (B, m) on rows @ value(start) + const over the box, with the slopes of every
    split node on the way optimised for the sum of the rows; `bounds` holds every node's box.
    -inf where not even CROWN's walk fits before `deadline`. `light`: by `LightAdam`."""
    b, m = rows.shape[:2]
    if not fits(deadline, pass_seconds(graph, start, b * m)):
        return torch.full((b, m), -torch.inf, dtype=EXACT, device=rows.device)
    exact = Relaxation.of(graph, bounds, extents_of(bounds))
    began = time.perf_counter()
    best = backward_bound(graph, start, rows, const, x_lo, x_hi, exact).value
    final = record_pass(graph, start, b * m, began)
    splits = split_ancestors(graph, start)
    step = pass_seconds(graph, start, b * m, FAST, grad=True)
    if steps <= 0 or not splits or not fits(deadline, (0.0 if light else adam_seconds()) + step + final):
        return best
    fast_graph = graph.to(FAST)
    fast = Relaxation.of(fast_graph, bounds, nodes=splits + [r for r in graph.relaxed if r not in splits])
    f_rows, f_const, f_lo, f_hi = (t.to(FAST) for t in (rows, const, x_lo, x_hi))
    alphas = {s: fast.data[s].default_slope.expand(-1, m, -1).clone().requires_grad_() for s in splits}
    groups = [{"params": list(alphas.values()), "lr": lr}]
    opt = LightAdam(groups) if light else adam(groups)
    pace = Pace(deadline, step, final)
    taken, began = 0, time.perf_counter()
    for _ in range(steps):
        if not pace.next():
            break
        value = backward_bound(fast_graph, start, f_rows, f_const, f_lo, f_hi, fast, alphas).value
        ascent_step(opt, value.sum(), list(alphas.values()))
        taken += 1
    if taken == 0:
        return best
    record_pass(graph, start, b * m, began, FAST, grad=True, walks=taken)
    with torch.no_grad():
        value = backward_bound(graph, start, rows, const, x_lo, x_hi, exact,
                               {s: a.detach().to(EXACT) for s, a in alphas.items()}).value
    return torch.fmax(best, value)


def selection(idx: torch.Tensor, size: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (1, 2k, size) picking +x[idx] then -x[idx], and their zero constants."""
    k = idx.numel()
    rows = torch.zeros((1, 2 * k, size), dtype=dtype, device=device)
    rows[0, torch.arange(k), idx] = 1.0
    rows[0, k + torch.arange(k), idx] = -1.0
    return rows, torch.zeros((1, 2 * k), dtype=dtype, device=device)


def node_bounds(graph: BoundGraph, node: int, x_lo, x_hi, bounds: list, idx: torch.Tensor, steps: int,
                deadline: float = math.inf) -> Box:
    """The box of `node` with entries `idx` tightened by (alpha-)CROWN, in chunks of rows that
    keep each walk within chunk_entries per node; `bounds` holds the boxes of its ancestors.
    Entries not reached in time keep their bounds."""
    lo, hi = (t.clone() for t in bounds[node])
    widest = max(graph.nodes[i].size for i in graph.ancestors[node] | {node})
    per_chunk = max(1, chunk_entries(lo.device) // (2 * widest))
    known = {i: b for i, b in enumerate(bounds) if b is not None}
    for part in idx.split(per_chunk):
        if time.perf_counter() > deadline:
            break
        rows, const = selection(part, graph.nodes[node].size, EXACT, lo.device)
        value = optimise_alpha(graph, node, rows, const, x_lo, x_hi, known, steps, deadline=deadline)[0]
        k = part.numel()
        lo[0, part] = torch.fmax(lo[0, part], value[:k])
        hi[0, part] = torch.fmin(hi[0, part], -value[k:])
    return lo, hi


def layer_bounds(graph: BoundGraph, x_lo, x_hi, known: Mapping[int, Box] | None = None, steps: int = 0,
                 deadline: float = math.inf, nodes: list[int] | None = None) -> dict[int, Box]:
    """Bounds (1, n) of the input of every relaxed node (or of `nodes`, relaxed nodes), each by
    (alpha-)CROWN on the bounds before it, in topological order; intersected with `known` and
    never looser. Returns `known` updated with the new boxes (keyed by the input node)."""
    known = dict(known or {})
    for r in graph.relaxed if nodes is None else nodes:
        p = graph.pre(r)
        if time.perf_counter() > deadline:
            break
        boxes = graph.interval(x_lo, x_hi, known, upto=p)
        lo, hi = boxes[p]
        if p == 0 or graph.nodes[p].inputs == [0]:  # the box, or one op on it: intervals are exact
            known[p] = (lo, hi)
            continue
        idx = torch.nonzero(graph.nodes[r].op.uncertain(lo[0], hi[0])).flatten()
        if idx.numel():
            known[p] = node_bounds(graph, p, x_lo, x_hi, boxes, idx, steps, deadline)
        else:
            known[p] = (lo, hi)
    return known
