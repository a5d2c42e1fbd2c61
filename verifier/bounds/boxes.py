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

from verifier.bounds.alpha import selection
from verifier.bounds.graph import BoundGraph, Box
from verifier.bounds.walker import EXACT, Relaxation, backward_bound, extents_of


@dataclass
class BoxBounds:
    value: torch.Tensor  # (B, R) lower bounds on rows @ output + const over each box
    lam0: torch.Tensor  # (B, R, n0) each bound's coefficients on the input (its worst corner)


def box_bounds(graph: BoundGraph, x_lo: torch.Tensor, x_hi: torch.Tensor, rows: torch.Tensor,
               const: torch.Tensor, deadline: float = math.inf) -> BoxBounds | None:
    """Lower bounds on rows (R, n_out) @ output + const (R,) over each box (x_lo, x_hi: (B, n0)),
    with every relaxed node's input bounded by CROWN per box first; None if the deadline passed
    before the bounds were done (nothing partial is a bound)."""
    known: dict[int, Box] = {}
    for r in graph.relaxed:
        if time.perf_counter() > deadline:
            return None
        p = graph.pre(r)
        boxes = graph.interval(x_lo, x_hi, known, upto=p)
        lo, hi = boxes[p]
        if p == 0 or graph.nodes[p].inputs == [0]:  # the box, or one op on it: intervals are exact
            known[p] = (lo, hi)
        else:
            # entries uncertain over the batch's hull: a superset of those uncertain in some box
            uncertain = graph.nodes[r].op.uncertain(lo.min(dim=0).values, hi.max(dim=0).values)
            known[p] = _tightened(graph, p, x_lo, x_hi, boxes, lo, hi, uncertain)
    if time.perf_counter() > deadline:
        return None
    boxes = graph.interval(x_lo, x_hi, known)
    present = {i: b for i, b in enumerate(boxes) if b is not None}
    b = x_lo.shape[0]
    out = backward_bound(graph, graph.output, rows.to(EXACT).expand(b, -1, -1), const.to(EXACT).expand(b, -1),
                         x_lo, x_hi, Relaxation.of(graph, present, extents_of(present)))
    return BoxBounds(out.value, out.lam0)


def _tightened(graph: BoundGraph, node: int, x_lo, x_hi, boxes: list, lo, hi, uncertain) -> Box:
    """The boxes' bounds on `node` with the `uncertain` entries (n,) tightened by CROWN (both
    sides: rows +e_i and -e_i); the other entries keep their intervals, which already decide the
    relaxation there."""
    idx = torch.nonzero(uncertain).flatten()
    if idx.numel() == 0:
        return lo, hi
    b, k = lo.shape[0], idx.numel()
    rows, const = selection(idx, graph.nodes[node].size, EXACT, lo.device)
    present = {i: box for i, box in enumerate(boxes) if box is not None}
    value = backward_bound(graph, node, rows.expand(b, -1, -1), const.expand(b, -1), x_lo, x_hi,
                           Relaxation.of(graph, present, extents_of(present))).value
    lo, hi = lo.clone(), hi.clone()
    lo[:, idx] = torch.fmax(lo[:, idx], value[:, :k])
    hi[:, idx] = torch.fmin(hi[:, idx], -value[:, k:])
    return lo, hi
