"""CROWN over many input boxes at once: the bounds input splitting needs (bab/input_split.py).

Each of B boxes gets its own bounds on every relaxed node's input, by CROWN's backward walk on
the bounds before it (intervals where the node is one op on the input, exact there), then on the
property's rows. With a handful of inputs, a box a few splits deep is small enough that these
bounds are nearly exact, where over the whole box they are hopelessly loose; so many small boxes
bounded in one batch of walks replace one deep search over ReLU splits. Every bound is computed
in float64 with the walker's outward rounding slack (walker.py), so it counts as a proof.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from verifier.bounds.alpha import optimise_alpha
from verifier.bounds.graph import BoundGraph, Box
from verifier.bounds.walker import EXACT, Relaxation, backward_bound, extents_of


@dataclass
class BoxBounds:
    value: torch.Tensor  # (B, R) lower bounds on rows @ output + const over each box
    lam0: torch.Tensor  # (B, R, n0) each bound's coefficients on the input (its worst corner)
    layers: torch.Tensor  # (B, 2T) every relaxed node's input bounds per box, packed (`LayerPacking`)


class LayerPacking:
    """Every relaxed node's input bounds per box as one (B, 2T) float32 tensor (lower parts,
    then upper parts, rounded outward): what a box hands its halves, which lie inside it, so
    their bounds start from it (CROWN is not monotone in the box, and the halves walk rows only
    for the entries still uncertain under it)."""

    def __init__(self, graph: BoundGraph) -> None:
        self.nodes = list(dict.fromkeys(graph.pre(r) for r in graph.relaxed))
        self.sizes = [graph.nodes[p].size for p in self.nodes]
        self.width = 2 * sum(self.sizes)

    def unbounded(self, b: int, device: torch.device) -> torch.Tensor:
        """(b, 2T): no bounds known."""
        half = self.width // 2
        return torch.cat([torch.full((b, half), -math.inf, dtype=torch.float32, device=device),
                          torch.full((b, half), math.inf, dtype=torch.float32, device=device)], dim=1)

    def pack(self, known: dict[int, Box], b: int, device: torch.device) -> torch.Tensor:
        """(b, 2T) from each node's (b, n) bounds; (b, 0) for a network without relaxed nodes."""
        if not self.nodes:
            return torch.empty((b, 0), dtype=torch.float32, device=device)
        lo = torch.cat([known[p][0] for p in self.nodes], dim=1)
        hi = torch.cat([known[p][1] for p in self.nodes], dim=1)
        return torch.cat([_rounded(lo, -math.inf), _rounded(hi, math.inf)], dim=1)

    def unpack(self, packed: torch.Tensor) -> dict[int, Box]:
        if not self.nodes:
            return {}
        half = self.width // 2
        lo = packed[:, :half].to(EXACT).split(self.sizes, dim=1)
        hi = packed[:, half:].to(EXACT).split(self.sizes, dim=1)
        return {p: (l, h) for p, l, h in zip(self.nodes, lo, hi)}


def _rounded(values: torch.Tensor, towards: float) -> torch.Tensor:
    """float64 values in float32, rounded towards `towards` (-inf: down, inf: up) where inexact."""
    near = values.to(torch.float32)
    off = near.to(values.dtype) > values if towards < 0 else near.to(values.dtype) < values
    return torch.where(off, torch.nextafter(near, torch.full_like(near, towards)), near)


def box_bounds(graph: BoundGraph, x_lo: torch.Tensor, x_hi: torch.Tensor, rows: torch.Tensor,
               const: torch.Tensor, deadline: float = math.inf, prior: torch.Tensor | None = None,
               packing: LayerPacking | None = None) -> BoxBounds | None:
    """Lower bounds on rows (R, n_out) @ output + const (R,) over each box (x_lo, x_hi: (B, n0)),
    with every relaxed node's input bounded by CROWN per box first, inside `prior` (B, 2T) bounds
    known to hold on each box (packed by `packing`); None if the deadline passed before the
    bounds were done (nothing partial is a bound)."""
    packing = packing or LayerPacking(graph)
    given = packing.unpack(prior) if prior is not None else {}
    known: dict[int, Box] = {}
    for r in graph.relaxed:
        if time.perf_counter() > deadline:
            return None
        p = graph.pre(r)
        boxes = graph.interval(x_lo, x_hi, known, upto=p)
        lo, hi = boxes[p]
        if p in given:
            lo, hi = torch.fmax(lo, given[p][0]), torch.fmin(hi, given[p][1])
        if p == 0 or graph.nodes[p].inputs == [0]:  # the box, or one op on it: intervals are exact
            known[p] = (lo, hi)
        else:
            known[p] = _tightened(graph, p, x_lo, x_hi, boxes, lo, hi, graph.nodes[r].op.uncertain(lo, hi))
    if time.perf_counter() > deadline:
        return None
    boxes = graph.interval(x_lo, x_hi, known)
    present = {i: b for i, b in enumerate(boxes) if b is not None}
    b = x_lo.shape[0]
    out = backward_bound(graph, graph.output, rows.to(EXACT).expand(b, -1, -1), const.to(EXACT).expand(b, -1),
                         x_lo, x_hi, Relaxation.of(graph, present, extents_of(present)))
    return BoxBounds(out.value, out.lam0, packing.pack(known, b, x_lo.device))


def optimised_box_bounds(graph: BoundGraph, x_lo: torch.Tensor, x_hi: torch.Tensor, rows: torch.Tensor,
                         const: torch.Tensor, layers: torch.Tensor, packing: LayerPacking, steps: int,
                         lr: float = 0.3, deadline: float = math.inf) -> torch.Tensor:
    """(B, R) lower bounds as `box_bounds`' on boxes whose layer bounds (B, 2T) it gave (rows
    (R, n_out) and const (R,) for every box, or (B, R, n_out) and (B, R) one set per box), with the
    output walk's slopes optimised per box and row (alpha-CROWN, `steps` Adam steps): on a small
    box with a few unstable ReLUs left, the slopes CROWN picks by the bounds' shape leave most
    of the gap (ACAS Xu: 10 steps prove three quarters of the boxes CROWN leaves open)."""
    known = packing.unpack(layers)
    boxes = graph.interval(x_lo, x_hi, known)
    present = {i: b for i, b in enumerate(boxes) if b is not None}
    b = x_lo.shape[0]
    rows, const = rows.to(EXACT).expand(b, -1, -1), const.to(EXACT).expand(b, -1)
    return optimise_alpha(graph, graph.output, rows, const,
                          x_lo, x_hi, present, steps, lr, deadline, light=True)


#: Groups of boxes a layer's rows are walked in, by how many uncertain entries each box has (a
#: group's rows are padded to its most): fewer rows walked for a few more calls.
GROUPS = 8


def _tightened(graph: BoundGraph, node: int, x_lo, x_hi, boxes: list, lo, hi, uncertain) -> Box:
    """The boxes' bounds on `node` with each box's `uncertain` entries (B, n) tightened by CROWN
    (both sides: rows +e_i and -e_i); the other entries keep their intervals, which already
    decide the relaxation there. Each box walks rows for its own uncertain entries only (padded
    to the most in its group, boxes grouped by that count): a few splits deep, a box has a
    handful where the batch's boxes together have nearly all."""
    counts = uncertain.sum(dim=1)
    if not counts.numel() or int(counts.max()) == 0:
        return lo, hi
    b = lo.shape[0]
    order = torch.argsort(counts)
    lo, hi = lo.clone(), hi.clone()
    for part in torch.tensor_split(order, min(GROUPS, b)):
        k = int(counts[part].max()) if part.numel() else 0
        if k == 0:
            continue
        picked = [None if box is None else tuple(t[part] if t.shape[0] == b else t for t in box) for box in boxes]
        lo[part], hi[part] = _tightened_group(graph, node, x_lo[part], x_hi[part], picked, lo[part], hi[part],
                                              uncertain[part], counts[part], k)
    return lo, hi


def _tightened_group(graph: BoundGraph, node: int, x_lo, x_hi, boxes: list, lo, hi, uncertain, counts, k: int) -> Box:
    """`_tightened` for one group of boxes, each with at most k uncertain entries."""
    b, n = lo.shape
    # each box's uncertain entries first (then others, as padding), k of them
    idx = torch.argsort(uncertain.to(torch.uint8), dim=1, descending=True, stable=True)[:, :k]
    valid = torch.arange(k, device=lo.device) < counts[:, None]
    rows = torch.zeros((b, 2 * k, n), dtype=EXACT, device=lo.device)
    ones = torch.ones((b, k, 1), dtype=EXACT, device=lo.device)
    rows[:, :k].scatter_(2, idx.unsqueeze(-1), ones)
    rows[:, k:].scatter_(2, idx.unsqueeze(-1), -ones)
    present = {i: box for i, box in enumerate(boxes) if box is not None}
    value = backward_bound(graph, node, rows, torch.zeros((b, 2 * k), dtype=EXACT, device=lo.device), x_lo, x_hi,
                           Relaxation.of(graph, present, extents_of(present))).value
    old_lo, old_hi = lo.gather(1, idx), hi.gather(1, idx)
    new_lo = torch.where(valid, torch.fmax(old_lo, value[:, :k]), old_lo)
    new_hi = torch.where(valid, torch.fmin(old_hi, -value[:, k:]), old_hi)
    return lo.scatter(1, idx, new_lo), hi.scatter(1, idx, new_hi)
