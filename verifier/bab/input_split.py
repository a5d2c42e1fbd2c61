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

from verifier.bab.input_leaf import decide_boxes
from verifier.bounds.boxes import BoxBounds, LayerPacking, box_bounds, optimised_box_bounds
from verifier.bounds.graph import BoundGraph
from verifier.bounds.walker import EXACT, minimiser
from verifier.deadline import fits


@dataclass
class InputSplitSettings:
    batch: int = 128  # boxes split per round
    heuristic: str = "sensitivity"  # which input to halve: "sensitivity" or "widest"
    trial: int = 3  # halve along each of the best `trial` inputs by that score, keep the best halves
    alpha_steps: int = 10  # Adam steps on the output walk's slopes of each half CROWN leaves open
    alpha_lr: float = 0.3  # their step size
    descent: int = 6  # sign-gradient steps from each open box's hunting points, inside the box
    # A popped box with at most `milp_relus` unstable ReLUs (0: never), whose bound lies more than
    # `milp_ratio` times its least slack seen below that slack, is decided by a MILP of at most
    # `milp_seconds` (bab/input_leaf.py); one not finished is halved instead.
    milp_relus: int = 30
    milp_ratio: float = 3.0
    milp_seconds: float = 0.05
    max_memory: int = 1_000_000_000  # bytes of open boxes before the search stops


#: Open boxes as plain tensors: corners (N, n0), spec bounds (N, S), split scores (N, n0), every
#: relaxed node's input bounds (N, 2T) packed (bounds/boxes.py, `LayerPacking`), and the least
#: slack seen at the box's hunting points (N,) (+inf: none yet).
Boxes = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class InputSplitOutcome:
    #: "proved" (every box closed), "counterexample" (confirm accepted `x`), "timeout",
    #: "memory" (the queue is full), "stuck" (an open box too small to halve), or "handoff"
    #: (`open` holds the open boxes, lowest bound first; `lower` covers only the closed ones)
    status: str
    lower: np.ndarray  # per spec: a lower bound on its slack over the boxes searched
    stats: dict = field(default_factory=dict)
    x: torch.Tensor | None = None
    open: Boxes | None = None


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
    """The open boxes, in tensors: corners (N, n0), spec bounds (N, S), each input's split
    score (N, n0), from the box's own bounds (-1: too narrow to halve), the box's layer
    bounds (N, 2T), float32, and the least slack seen in it (N,)."""

    def __init__(self, n0: int, specs: int, layers: int, device: torch.device) -> None:
        self.parts = (torch.empty((0, n0), dtype=EXACT, device=device), torch.empty((0, n0), dtype=EXACT, device=device),
                      torch.empty((0, specs), dtype=EXACT, device=device),
                      torch.empty((0, n0), dtype=EXACT, device=device),
                      torch.empty((0, layers), dtype=torch.float32, device=device),
                      torch.empty((0,), dtype=EXACT, device=device))
        #: bytes per box: the tensors' entries (the queue lives in a few big tensors)
        self.box_bytes = 8 * (3 * n0 + specs + 1) + 4 * layers

    def __len__(self) -> int:
        return self.parts[0].shape[0]

    @property
    def lower(self) -> torch.Tensor:
        return self.parts[2]

    def push(self, *parts) -> None:
        self.parts = tuple(torch.cat([old, new]) for old, new in zip(self.parts, parts))

    def pop(self, k: int) -> tuple:
        """The k boxes whose least spec bound is lowest, as (lo, hi, lower, scores, layers, seen)."""
        take = torch.topk(self.lower.min(dim=1).values, min(k, len(self)), largest=False).indices
        keep = torch.ones(len(self), dtype=torch.bool, device=take.device)
        keep[take] = False
        out = tuple(t[take] for t in self.parts)
        self.parts = tuple(t[keep] for t in self.parts)
        return out


def input_branch_and_bound(graph: BoundGraph, specs: Specs, x_lo: torch.Tensor, x_hi: torch.Tensor,
                           lower: torch.Tensor, tolerance: float, deadline: float,
                           confirm: Callable[[torch.Tensor], bool], settings: InputSplitSettings | None = None,
                           start: Boxes | None = None, handoff: int | None = None) -> InputSplitOutcome:
    """Prove every spec over the box [x_lo, x_hi] (n0,) by halving it, or find a point that
    violates one (accepted by `confirm`, which gets a (n0,) float64 tensor). `lower` (S,) are
    bounds already known over the whole box (the root's). With `start`, the search covers only
    those open boxes of an earlier one (bab/parallel.py); with `handoff`, it stops once that many
    boxes are open and returns them."""
    settings = settings or InputSplitSettings()
    started = time.perf_counter()
    device = graph.device
    search = _Search(graph, specs.to(device), x_lo.reshape(1, -1).to(device, EXACT),
                     x_hi.reshape(1, -1).to(device, EXACT), tolerance, confirm, settings)
    queue, held = search.queue, []  # held: open boxes too small to halve
    status, x, round_seconds = "running", None, 0.0
    if start is None:
        root = (search.root_lo, search.root_hi, lower.reshape(1, -1).to(device, EXACT))
        bounds = box_bounds(graph, *root[:2], search.specs.rows, search.specs.const, deadline,
                            packing=search.packing)
        if bounds is None:
            queue.push(*root, torch.full_like(root[0], -1.0), search.packing.unbounded(1, device),
                       torch.full((1,), math.inf, dtype=EXACT, device=device))
            status = "timeout"
        else:
            x = search.expand(*root, bounds)
    else:
        queue.push(*(t.to(device) for t in start))
    while status == "running" and x is None and len(queue):
        if handoff is not None and len(queue) >= handoff:
            status = "handoff"
            break
        if len(queue) * queue.box_bytes > settings.max_memory:
            status = "memory"
            break
        if not fits(deadline, round_seconds):
            status = "timeout"
            break
        began = time.perf_counter()
        boxes = queue.pop(settings.batch)
        if settings.milp_relus > 0:
            boxes, x = search.decided_exactly(boxes, deadline)
            if x is not None:
                break
        stuck = boxes[3].max(dim=1).values < 0
        if bool(stuck.any()):
            held.append(tuple(t[stuck] for t in boxes))
            boxes = tuple(t[~stuck] for t in boxes)
        if not len(boxes[0]):
            continue
        lo, hi, parent, bounds = _children(graph, search.packing, search.specs, *boxes[:5], settings.trial,
                                              deadline)
        if bounds is None:  # past the deadline: the boxes stay as they were
            queue.push(*boxes)
            status = "timeout"
            break
        bounds = search.sharpened(lo, hi, parent, bounds, deadline)
        x = search.expand(lo, hi, parent, bounds)
        round_seconds = time.perf_counter() - began
    if x is not None:
        status = "counterexample"
    elif status == "running":
        status = "stuck" if held else "proved"
    for boxes in held:
        queue.push(*boxes)
    search.stats["input_open"] = len(queue)
    search.stats["time_input_split"] = round(time.perf_counter() - started, 4)
    closed = search.closed
    if status == "handoff":
        order = torch.argsort(queue.lower.min(dim=1).values)
        return InputSplitOutcome(status, closed.cpu().numpy(), search.stats,
                                 open=tuple(t[order].cpu() for t in queue.parts))
    least = torch.minimum(closed, queue.lower.min(dim=0).values) if len(queue) else closed
    if x is not None:  # a search stopped by a point proves nothing
        least = torch.full_like(least, -math.inf)
    return InputSplitOutcome(status, least.cpu().numpy(), search.stats, x=x)


class _Search:
    """One input search's state: the queue, the least bound over closed boxes, statistics."""

    def __init__(self, graph: BoundGraph, specs: Specs, root_lo, root_hi, tolerance: float, confirm,
                 settings: InputSplitSettings) -> None:
        self.graph, self.specs, self.root_lo, self.root_hi = graph, specs, root_lo, root_hi
        self.tolerance, self.confirm, self.settings = tolerance, confirm, settings
        width = (root_hi - root_lo)[0]
        self.scale = torch.where(width > 0, width, torch.ones_like(width))  # widths relative to the root's
        self.packing = LayerPacking(graph)
        self.queue = _Queue(root_lo.shape[1], specs.count, self.packing.width, root_lo.device)
        self.closed = torch.full((specs.count,), math.inf, dtype=EXACT, device=root_lo.device)
        self.stats = {"input_boxes": 0, "input_rounds": 0}

    def sharpened(self, lo, hi, parent, bounds: BoxBounds, deadline: float) -> BoxBounds:
        """The boxes' bounds, with the slopes optimised (alpha-CROWN) where CROWN's leave a spec
        open: for each spec its best-bounded row only (a spec holds where any of its rows is
        positive, so that row is the one likeliest to prove it; ACAS Xu's property 2 has four).
        A bound is the better of the two; CROWN's coefficients still steer the splits."""
        steps, specs = self.settings.alpha_steps, self.specs
        open_ = ~(torch.fmax(specs.per_spec(bounds.value), parent) > self.tolerance).all(dim=1)
        if steps <= 0 or not bool(open_.any()):
            return bounds
        value = bounds.value[open_]
        best = _best_rows(specs, value)
        sharp = optimised_box_bounds(self.graph, lo[open_], hi[open_], specs.rows[best], specs.const[best],
                                     bounds.layers[open_], self.packing, steps, self.settings.alpha_lr, deadline)
        out = bounds.value.clone()
        out[open_] = value.scatter_reduce(1, best, sharp, "amax")
        return BoxBounds(out, bounds.lam0, bounds.layers)

    def decided_exactly(self, boxes: tuple, deadline: float) -> tuple[tuple, torch.Tensor | None]:
        """Decide the boxes with few unstable ReLUs left by MILPs (bab/input_leaf.py): the
        boxes still open after them (to be halved), and a point `confirm` accepted, if one."""
        closed, bounds, x = decide_boxes(self.graph, self.packing, self.specs, boxes, self.settings, self.tolerance,
                                         self.confirm, deadline, self.stats)
        if bool(closed.any()):
            self.closed = torch.minimum(self.closed, bounds[closed].min(dim=0).values)
        return tuple(t[~closed] for t in boxes), x

    def expand(self, lo, hi, parent, bounds: BoxBounds) -> torch.Tensor | None:
        """Take newly bounded boxes in: hunt for a violation at their corners and centres
        (the point `confirm` accepted, if one), close the proven ones, queue the others."""
        specs, tolerance = self.specs, self.tolerance
        spec_lower = torch.fmax(specs.per_spec(bounds.value), parent)
        self.stats["input_boxes"] += lo.shape[0]
        self.stats["input_rounds"] += 1
        x, seen = _hunt(self.graph, specs, lo, hi, bounds, spec_lower, tolerance, self.confirm,
                        self.settings.descent)
        if x is not None:
            return x
        done = (spec_lower > tolerance).all(dim=1)
        if bool(done.any()):
            self.closed = torch.minimum(self.closed, spec_lower[done].min(dim=0).values)
        keep = ~done
        scores = _split_scores(specs, lo[keep], hi[keep], bounds.lam0[keep], bounds.value[keep], spec_lower[keep],
                               tolerance, self.scale, self.settings.heuristic)
        self.queue.push(lo[keep], hi[keep], spec_lower[keep], scores, bounds.layers[keep], seen)
        return None


def _split_scores(specs: Specs, lo, hi, lam0, values, spec_lower, tolerance: float, scale,
                  heuristic: str) -> torch.Tensor:
    """How much halving each input promises (-1 where its midpoint is not strictly inside).
    "widest": the width relative to the root box; "sensitivity": how much the worst open spec's
    bound leans on the input's spread, |a_i| (hi_i - lo_i) for its CROWN coefficients a (the
    widths where no coefficient says)."""
    width = hi - lo
    mid = lo + width / 2
    splittable = (mid > lo) & (mid < hi)
    relative = width / scale
    score = relative
    if heuristic == "sensitivity" and lo.shape[0]:
        a = lam0[torch.arange(lo.shape[0], device=lo.device), _worst_rows(specs, values, spec_lower, tolerance)]
        lean = a.abs() * width
        score = torch.where(lean.amax(dim=1, keepdim=True) > 0, lean, score)
    score = torch.where(splittable, score, torch.full_like(score, -1.0))
    if not lo.shape[0]:
        return score
    # A box never gets thinner than 1/ASPECT of its widest input (relative to the root's): inputs
    # that thin are not offered, so every input shrinks (the widest always stays offered).
    relative = torch.where(splittable, relative, torch.full_like(relative, -1.0))
    thin = relative * ASPECT < relative.amax(dim=1, keepdim=True)
    return torch.where(thin, torch.full_like(score, -1.0), score)


#: The most a box's relative widths may differ (`_split_scores`): without a cap, trials that peel
#: thin proven slices off one side can halve one input for ever while another stays wide.
ASPECT = 64.0


def _children(graph, packing: LayerPacking, specs: Specs, lo, hi, parent, scores, layers, trial: int,
              deadline: float):
    """The boxes' halves (first halves, then second ones), their parents' bounds and their own
    bounds (None past the deadline), each half's starting from its parent's layer bounds. Each
    box is halved along each of its `trial` best-scored inputs, and the pair kept is the one
    whose halves' worst spec bounds (each at least its parent's, at most 0) add up highest."""
    b, n0 = lo.shape
    k = min(trial, n0)
    top = torch.topk(scores, k, dim=1)
    box = torch.arange(b, device=lo.device).repeat_interleave(k)
    dim, valid = top.indices.reshape(-1), top.values.reshape(-1) >= 0
    box, dim = box[valid], dim[valid]
    c_lo, c_hi, c_parent = _halves(lo[box], hi[box], parent[box], dim)
    prior = layers[box].repeat(2, 1)
    bounds = box_bounds(graph, c_lo, c_hi, specs.rows, specs.const, deadline, prior, packing)
    m = box.numel()
    if bounds is None or k == 1:
        return c_lo, c_hi, c_parent, bounds
    worst = torch.fmax(specs.per_spec(bounds.value), c_parent).min(dim=1).values.clamp(max=0)
    gain = torch.full((b, k), -math.inf, dtype=EXACT, device=lo.device)
    gain.view(-1)[torch.nonzero(valid).flatten()] = worst[:m] + worst[m:]
    pick = torch.cumsum(valid.long(), 0).reshape(b, k) - 1  # each (box, candidate)'s index among the valid
    take = pick[torch.arange(b, device=lo.device), gain.argmax(dim=1)]
    take = torch.cat([take, take + m])
    return c_lo[take], c_hi[take], c_parent[take], BoxBounds(bounds.value[take], bounds.lam0[take],
                                                              bounds.layers[take])


def _best_rows(specs: Specs, values) -> torch.Tensor:
    """(B, S): per box and spec, its best-bounded row (the row that decides the spec's bound)."""
    mine = specs.owner[None, None, :] == torch.arange(specs.count, device=values.device)[None, :, None]
    return torch.where(mine, values[:, None, :], torch.full_like(values[:, None, :], -math.inf)).argmax(dim=2)


def _worst_rows(specs: Specs, values, parent, tolerance: float) -> torch.Tensor:
    """Per box, the best-bounded row of its lowest open spec."""
    spec = torch.where(parent > tolerance, torch.full_like(parent, math.inf), parent).argmin(dim=1)
    return _best_rows(specs, values)[torch.arange(values.shape[0], device=values.device), spec]


def _halves(lo, hi, parent, dims):
    """Each box's two halves along dims (B,): (2B, n0) corners, the parent's bounds repeated."""
    rows = torch.arange(lo.shape[0], device=lo.device)
    mid = (lo[rows, dims] + hi[rows, dims]) / 2
    left_hi, right_lo = hi.clone(), lo.clone()
    left_hi[rows, dims] = mid
    right_lo[rows, dims] = mid
    return torch.cat([lo, right_lo]), torch.cat([left_hi, hi]), torch.cat([parent, parent])


def _hunt(graph, specs: Specs, lo, hi, bounds, spec_lower, tolerance: float, confirm,
          descent: int = 0) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run each open box's worst corner (for its worst row) and centre through the network,
    then `descent` steps of projected sign-gradient descent on the least spec slack from both,
    inside the box: the first point violating a spec that `confirm` accepts (or None), and per
    open box the least slack seen (how close the box's true least comes to a violation)."""
    open_ = ~(spec_lower > tolerance).all(dim=1)
    b = int(open_.sum())
    seen = torch.full((b,), math.inf, dtype=EXACT, device=lo.device)
    if not b:
        return None, seen
    lo, hi, value, lam0 = lo[open_], hi[open_], bounds.value[open_], bounds.lam0[open_]
    rows = _worst_rows(specs, value, spec_lower[open_], tolerance)
    corners = minimiser(lam0, lo, hi)[torch.arange(lo.shape[0], device=lo.device), rows]
    points = torch.cat([corners, (lo + hi) / 2])
    box_lo, box_hi = lo.repeat(2, 1), hi.repeat(2, 1)
    step = (box_hi - box_lo) / 8
    for k in range(descent + 1):
        points = points.detach().requires_grad_(k < descent)
        with torch.set_grad_enabled(k < descent):
            slack = specs.per_spec(graph.forward(points) @ specs.rows.T + specs.const).min(dim=1).values
        seen = torch.minimum(seen, torch.minimum(slack[:b], slack[b:]).detach().to(EXACT))
        for i in torch.nonzero(slack <= 0).flatten()[:8].tolist():
            if confirm(points[i].detach().cpu()):
                return points[i].detach().cpu(), seen
        if k < descent:
            (grad,) = torch.autograd.grad(slack.sum(), points)
            points = torch.fmin(torch.fmax(points - step * grad.sign(), box_lo), box_hi)
            step = step * 0.7
    return None, seen
