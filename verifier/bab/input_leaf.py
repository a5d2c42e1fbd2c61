"""An exact MILP for a small input box: what closes the boxes input splitting closes slowest.

Near a property's tightest point (ACAS Xu 3_3 property 2: least slack about 0.001) the least
lies where several ReLUs turn, so those stay unstable in every box around it however small,
and CROWN's error there shrinks only with the box's width: halving in five inputs multiplies
the boxes by up to 2^5 for each halving of the error. Over a small box, though, only a dozen or
two ReLUs are unstable, and the MILP with one binary each (encode/, HiGHS) decides the box
exactly. Asked only whether anything lies at or below the threshold (a cutoff), not for the
optimum, HiGHS answers such a box in a few milliseconds (benchmarks/RESULTS.md).

Soundness: the encoding uses the box's own layer bounds, which hold over it. A box counts as
proven only when the MIP finished: "infeasible" under the cutoff (nothing at or below it: the
convention of search/region.py's MIP) or optimal with a dual bound above the tolerance. A MIP
point at or below the threshold is only a candidate: `confirm` (onnxruntime) has the say.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from solvers.base import SolveOptions, SolveStatus
from solvers.highs import HighsSolver
from verifier.bounds.boxes import LayerPacking
from verifier.bounds.graph import BoundGraph
from verifier.bounds.walker import EXACT
from verifier.encode.network import encode_network


@dataclass
class BoxVerdict:
    """One box's MILP answer for one spec: `bound` is a proven lower bound on the spec's slack
    over the box (-inf when the MIP did not finish), `x` a candidate point (n0,) at or below 0."""

    bound: float
    x: np.ndarray | None = None


def uncertain_counts(graph: BoundGraph, packing: LayerPacking, layers: torch.Tensor) -> torch.Tensor:
    """(B,) how many relaxed entries each box's layer bounds (B, 2T) leave unstable: the
    binaries its MILP would have."""
    known = packing.unpack(layers)
    counts = torch.zeros(layers.shape[0], dtype=torch.long, device=layers.device)
    for r in graph.relaxed:
        lo, hi = known[graph.pre(r)]
        counts += graph.nodes[r].op.uncertain(lo, hi).sum(dim=1)
    return counts


def box_milp(graph: BoundGraph, packing: LayerPacking, lo: torch.Tensor, hi: torch.Tensor, layers: torch.Tensor,
             rows: torch.Tensor, const: torch.Tensor, tolerance: float, time_limit: float) -> BoxVerdict:
    """Decide min over the box [lo, hi] (n0,) of max_r rows_r @ output + const_r > tolerance by
    one MILP built from the box's layer bounds (2T,) (rows (k, n_out), const (k,))."""
    net = graph.net
    one = layers.reshape(1, -1)
    boxes = graph.interval(lo.reshape(1, -1), hi.reshape(1, -1), packing.unpack(one), upto=graph.output)
    bounds = {graph.nodes[i].name: (b[0][0].cpu().numpy(), b[1][0].cpu().numpy())
              for i, b in enumerate(boxes) if b is not None}
    if any(bool((l > h).any()) for l, h in bounds.values()):
        # Every input of a box reaches every node (no split constraints here): crossed bounds
        # are numerical trouble, not an empty box, so they decide nothing.
        return BoxVerdict(-np.inf)
    # only the nodes on the way to the output (not a second model output's head)
    enc = encode_network(net, bounds, [graph.nodes[i].name for i, b in enumerate(boxes) if i > 0 and b is not None])
    out = graph.nodes[graph.output].name
    problem = enc.minimising_max(out, rows.cpu().numpy(), -const.cpu().numpy(), bounds[out])
    cutoff = 2 * tolerance
    res = HighsSolver(problem, presolve=False).solve(SolveOptions(time_limit=time_limit, cutoff=cutoff, target=0.0))
    if res.status == SolveStatus.INFEASIBLE:  # under the cutoff: nothing at or below it
        return BoxVerdict(cutoff)
    finished = res.status == SolveStatus.OPTIMAL
    bound = min(res.dual_bound, cutoff) if finished else -np.inf
    x = None
    if res.x is not None and res.objective <= tolerance:
        x = np.clip(res.x[enc.input_cols], lo.cpu().numpy(), hi.cpu().numpy())
    return BoxVerdict(bound, x)


def decide_boxes(graph: BoundGraph, packing: LayerPacking, specs, boxes: tuple, settings, tolerance: float,
                 confirm: Callable[[torch.Tensor], bool], deadline: float,
                 stats: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Decide popped boxes (bab/input_split.py's queue parts) by one MILP per open spec where
    halving would be slow: at most `settings.milp_relus` unstable ReLUs left (a MILP's cost
    grows fast with its binaries), and a bound further below the box's least slack seen than
    `settings.milp_ratio` times that slack (the bound's error must shrink by more than that
    factor, and halving every input only about halves it: 2^n0 boxes a time). Returns which
    boxes closed (B,), their spec bounds (B, S), and a point `confirm` accepted, if one."""
    lo, hi, lower, _, layers, seen = boxes
    few = uncertain_counts(graph, packing, layers) <= settings.milp_relus
    slow = seen - lower.min(dim=1).values > settings.milp_ratio * seen.clamp(min=0)
    closed = torch.zeros(lo.shape[0], dtype=torch.bool, device=lo.device)
    bounds = lower.clone()
    began = time.perf_counter()
    try:
        for i in torch.nonzero(few & slow).flatten().tolist():
            for s in torch.nonzero(lower[i] <= tolerance).flatten().tolist():
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                mine = specs.owner == s
                verdict = box_milp(graph, packing, lo[i], hi[i], layers[i], specs.rows[mine], specs.const[mine],
                                   tolerance, min(settings.milp_seconds, left))
                stats["input_milps"] = stats.get("input_milps", 0) + 1
                if verdict.x is not None:
                    point = torch.as_tensor(verdict.x, dtype=EXACT)
                    if confirm(point):
                        return closed, bounds, point
                if verdict.bound <= tolerance:
                    break
                bounds[i, s] = max(float(bounds[i, s]), verdict.bound)
            closed[i] = bool((bounds[i] > tolerance).all())
    finally:
        stats["input_milp_closed"] = stats.get("input_milp_closed", 0) + int(closed.sum())
        stats["time_input_milp"] = round(stats.get("time_input_milp", 0) + time.perf_counter() - began, 4)
    return closed, bounds, None
