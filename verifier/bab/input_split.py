"""Branch and bound over the input box: for properties over a handful of inputs (ACAS Xu).

Over a wide box, bounds on a deep network are hopelessly loose; over a small sub-box they are
nearly exact. So the box is halved along one input at a time, each half bounded by CROWN
(bounds/boxes.py, a whole batch of boxes in one set of walks), and a half is dropped once every
spec is proven there. Each round takes the open boxes with the lowest bounds (where a
counterexample is likeliest and a proof hardest), so the search also hunts: every new box's
worst corner and centre go through the network, and a point that violates a spec is handed to
`confirm` (onnxruntime's say) before it counts.

Soundness: a spec's bound over the region is the least over the leaves of the split tree (the
closed boxes and the open ones), and the leaves cover the region: a box is only ever replaced by
its two halves, which share the split value. A child's bound is the max of its own and its
parent's (both hold on the child). "Proved" needs every leaf closed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from verifier.bounds.boxes import BoxBounds, box_bounds
from verifier.bounds.graph import BoundGraph
from verifier.bounds.walker import EXACT, minimiser
from verifier.deadline import fits



@dataclass
class InputSplitSettings:
    batch: int = 256  # boxes split per round
    heuristic: str = "sensitivity"  # which input to halve: "sensitivity" or "widest"
    trial: int = 1  # halve along each of the best `trial` inputs by that score, keep the best halves
    max_memory: int = 1_000_000_000  # bytes of open boxes before the search stops


@dataclass
class InputSplitOutcome:
    #: "proved" (every box closed), "counterexample" (confirm accepted a point), "timeout",
    #: "memory" (the queue is full) or "stuck" (an open box too small to halve)
    status: str
    lower: np.ndarray  # per spec: a lower bound on its slack over the whole box
    stats: dict = field(default_factory=dict)


@dataclass
class Specs:
    """The specs to prove over the box: spec s holds where max over its rows of
    rows_r @ output + const_r > tolerance."""

    rows: torch.Tensor  # (R, n_out)
    const: torch.Tensor  # (R,)
    owner: torch.Tensor  # (R,) the spec of each row
    count: int

    @staticmethod
    def of(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> "Specs":
        """From each spec's (rows (k, n_out), const (k,))."""
        owner = torch.cat([torch.full((r.shape[0],), s, dtype=torch.long) for s, (r, _) in enumerate(pairs)])
        return Specs(torch.cat([r for r, _ in pairs]).to(EXACT), torch.cat([c for _, c in pairs]).to(EXACT), owner,
                     len(pairs))

    def to(self, device: torch.device) -> "Specs":
        return Specs(self.rows.to(device), self.const.to(device), self.owner.to(device), self.count)

    def per_spec(self, values: torch.Tensor) -> torch.Tensor:
        """(B, R) row values -> (B, count) the max over each spec's rows."""
        out = torch.full((values.shape[0], self.count), -math.inf, dtype=values.dtype, device=values.device)
        return out.scatter_reduce(1, self.owner.expand(values.shape[0], -1), values, "amax")


class _Queue:
    """The open boxes, in tensors: corners (N, n0), spec bounds (N, S) and each input's split
    score (N, n0), from the box's own bounds (-1: too narrow to halve)."""

    def __init__(self, n0: int, specs: int, device: torch.device) -> None:
        self.parts = (torch.empty((0, n0), dtype=EXACT, device=device), torch.empty((0, n0), dtype=EXACT, device=device),
                      torch.empty((0, specs), dtype=EXACT, device=device),
                      torch.empty((0, n0), dtype=EXACT, device=device))
        #: bytes per box: the tensors' entries (the queue lives in a few big tensors)
        self.box_bytes = 8 * (3 * n0 + specs)

    def __len__(self) -> int:
        return self.parts[0].shape[0]

    @property
    def lower(self) -> torch.Tensor:
        return self.parts[2]

    def push(self, *parts) -> None:
        self.parts = tuple(torch.cat([old, new]) for old, new in zip(self.parts, parts))

    def pop(self, k: int) -> tuple:
        """The k boxes whose least spec bound is lowest, as (lo, hi, lower, scores)."""
        take = torch.topk(self.lower.min(dim=1).values, min(k, len(self)), largest=False).indices
        keep = torch.ones(len(self), dtype=torch.bool, device=take.device)
        keep[take] = False
        out = tuple(t[take] for t in self.parts)
        self.parts = tuple(t[keep] for t in self.parts)
        return out


def input_branch_and_bound(graph: BoundGraph, specs: Specs, x_lo: torch.Tensor, x_hi: torch.Tensor,
                           lower: torch.Tensor, tolerance: float, deadline: float,
                           confirm: Callable[[torch.Tensor], bool],
                           settings: InputSplitSettings | None = None) -> InputSplitOutcome:
    """Prove every spec over the box [x_lo, x_hi] (n0,) by halving it, or find a point that
    violates one (accepted by `confirm`, which gets a (n0,) float64 tensor). `lower` (S,) are
    bounds already known over the whole box (the root's)."""
    settings = settings or InputSplitSettings()
    started = time.perf_counter()
    n0, device = x_lo.numel(), graph.device
    specs = specs.to(device)
    lo, hi = x_lo.reshape(1, -1).to(device, EXACT), x_hi.reshape(1, -1).to(device, EXACT)
    width = hi[0] - lo[0]
    scale = torch.where(width > 0, width, torch.ones_like(width))  # widths relative to the root's
    queue = _Queue(n0, specs.count, device)
    closed = torch.full((specs.count,), math.inf, dtype=EXACT, device=device)  # least bound over the closed boxes
    stats = {"input_boxes": 0, "input_rounds": 0}
    status = "proved"
    parent = lower.reshape(1, -1).to(device, EXACT)
    began = started
    bounds = box_bounds(graph, lo, hi, specs.rows, specs.const, deadline)
    while True:
        if bounds is None:  # the deadline passed inside: the boxes keep their parent's bounds
            queue.push(lo, hi, parent, torch.full_like(lo, -1.0))
            status = "timeout"
            break
        spec_lower = torch.fmax(specs.per_spec(bounds.value), parent)
        if _hunt(graph, specs, lo, hi, bounds, spec_lower, tolerance, confirm):
            status = "counterexample"
            break
        done = (spec_lower > tolerance).all(dim=1)
        if bool(done.any()):
            closed = torch.minimum(closed, spec_lower[done].min(dim=0).values)
        keep = ~done
        scores = _split_scores(specs, lo[keep], hi[keep], bounds.lam0[keep], bounds.value[keep], spec_lower[keep],
                               tolerance, scale, settings.heuristic)
        queue.push(lo[keep], hi[keep], spec_lower[keep], scores)
        stats["input_boxes"] += lo.shape[0]
        stats["input_rounds"] += 1
        round_seconds = time.perf_counter() - began
        if not len(queue):
            break
        if len(queue) * queue.box_bytes > settings.max_memory:
            status = "memory"
            break
        if not fits(deadline, round_seconds):
            status = "timeout"
            break
        began = time.perf_counter()
        lo, hi, parent, scores = queue.pop(settings.batch)
        stuck = scores.max(dim=1).values < 0
        if bool(stuck.any()):  # a box too small to halve stays open for good
            status = "stuck"
            queue.push(lo[stuck], hi[stuck], parent[stuck], scores[stuck])
            lo, hi, parent, scores = lo[~stuck], hi[~stuck], parent[~stuck], scores[~stuck]
            if not len(lo):
                break
        lo, hi, parent, bounds = _children(graph, specs, lo, hi, parent, scores, settings.trial, deadline)
    stats["input_open"] = len(queue)
    stats["time_input_split"] = round(time.perf_counter() - started, 4)
    least = torch.minimum(closed, queue.lower.min(dim=0).values) if len(queue) else closed
    if status == "proved" and len(queue):
        status = "stuck"
    return InputSplitOutcome(status, least.cpu().numpy(), stats)


def _split_scores(specs: Specs, lo, hi, lam0, values, spec_lower, tolerance: float, scale,
                  heuristic: str) -> torch.Tensor:
    """How much halving each input promises (-1 where its midpoint is not strictly inside).
    "widest": the width relative to the root box; "sensitivity": how much the worst open spec's
    bound leans on the input's spread, |a_i| (hi_i - lo_i) for its CROWN coefficients a (the
    widths where no coefficient says)."""
    width = hi - lo
    mid = lo + width / 2
    splittable = (mid > lo) & (mid < hi)
    score = width / scale
    if heuristic == "sensitivity" and lo.shape[0]:
        a = lam0[torch.arange(lo.shape[0], device=lo.device), _worst_rows(specs, values, spec_lower, tolerance)]
        lean = a.abs() * width
        score = torch.where(lean.amax(dim=1, keepdim=True) > 0, lean, score)
    return torch.where(splittable, score, torch.full_like(score, -1.0))


def _children(graph, specs: Specs, lo, hi, parent, scores, trial: int, deadline: float):
    """The boxes' halves (first halves, then second ones), their parents' bounds and their own
    bounds (None past the deadline). Each box is halved along each of its `trial` best-scored
    inputs, and the pair kept is the one whose halves' worst spec bounds (each at least its
    parent's, at most 0) add up highest."""
    b, n0 = lo.shape
    k = min(trial, n0)
    top = torch.topk(scores, k, dim=1)
    box = torch.arange(b, device=lo.device).repeat_interleave(k)
    dim, valid = top.indices.reshape(-1), top.values.reshape(-1) >= 0
    box, dim = box[valid], dim[valid]
    c_lo, c_hi, c_parent = _halves(lo[box], hi[box], parent[box], dim)
    bounds = box_bounds(graph, c_lo, c_hi, specs.rows, specs.const, deadline)
    m = box.numel()
    if bounds is None or k == 1:
        return c_lo, c_hi, c_parent, bounds
    worst = torch.fmax(specs.per_spec(bounds.value), c_parent).min(dim=1).values.clamp(max=0)
    gain = torch.full((b, k), -math.inf, dtype=EXACT, device=lo.device)
    gain.view(-1)[torch.nonzero(valid).flatten()] = worst[:m] + worst[m:]
    pick = torch.cumsum(valid.long(), 0).reshape(b, k) - 1  # each (box, candidate)'s index among the valid
    take = pick[torch.arange(b, device=lo.device), gain.argmax(dim=1)]
    take = torch.cat([take, take + m])
    return c_lo[take], c_hi[take], c_parent[take], BoxBounds(bounds.value[take], bounds.lam0[take])


def _worst_rows(specs: Specs, values, parent, tolerance: float) -> torch.Tensor:
    """Per box, the best-bounded row of its lowest open spec (the row that decides that spec)."""
    spec = torch.where(parent > tolerance, torch.full_like(parent, math.inf), parent).argmin(dim=1)
    mine = specs.owner[None, :] == spec[:, None]
    return torch.where(mine, values, torch.full_like(values, -math.inf)).argmax(dim=1)


def _halves(lo, hi, parent, dims):
    """Each box's two halves along dims (B,): (2B, n0) corners, the parent's bounds repeated."""
    rows = torch.arange(lo.shape[0], device=lo.device)
    mid = (lo[rows, dims] + hi[rows, dims]) / 2
    left_hi, right_lo = hi.clone(), lo.clone()
    left_hi[rows, dims] = mid
    right_lo[rows, dims] = mid
    return torch.cat([lo, right_lo]), torch.cat([left_hi, hi]), torch.cat([parent, parent])


def _hunt(graph, specs: Specs, lo, hi, bounds, spec_lower, tolerance: float, confirm) -> bool:
    """Run each open box's worst corner (for its worst row) and centre through the network;
    True once `confirm` accepts a point violating a spec."""
    open_ = ~(spec_lower > tolerance).all(dim=1)
    if not bool(open_.any()):
        return False
    lo, hi, value, lam0 = lo[open_], hi[open_], bounds.value[open_], bounds.lam0[open_]
    rows = _worst_rows(specs, value, spec_lower[open_], tolerance)
    corners = minimiser(lam0, lo, hi)[torch.arange(lo.shape[0], device=lo.device), rows]
    points = torch.cat([corners, (lo + hi) / 2])
    with torch.no_grad():
        out = graph.forward(points)
    slack = specs.per_spec(out @ specs.rows.T + specs.const).min(dim=1).values
    for i in torch.nonzero(slack <= 0).flatten()[:8].tolist():
        if confirm(points[i].cpu()):
            return True
    return False
