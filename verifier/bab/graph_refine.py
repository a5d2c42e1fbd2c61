"""Intermediate bounds refined by branch and bound on a bound graph: the bounds of a split
node's unstable inputs (a ReLU's pre-activations), each proven or tightened over splits of the
split nodes before it — the graph engine's form of refine.py, whose docstring gives the why and
the measurements behind its settings (shares per layer, search settings per depth).

A refinement search is an ordinary graph search (graph_problem.py) whose start is the split
node's input and whose specs are its unstable entries' two bound directions (+z_j, -z_j), so
everything a search proves there is a valid bound on that entry over the box.
"""

from __future__ import annotations

import time
from typing import Mapping

import torch

from verifier.bab.graph_problem import GraphTarget
from verifier.bab.parallel import SpecWorkers, search
from verifier.bab.refine import layer_settings, layer_shares
from verifier.bab.search import BabSettings
from verifier.bounds.alpha import layer_bounds, selection, split_ancestors
from verifier.bounds.graph import BoundGraph, Box


def refinable(graph: BoundGraph) -> list[int]:
    """The split nodes whose input depends on an earlier split node (the others' bounds cannot
    gain from splits), in topological order."""
    splits = set(graph.splits)
    return [s for s in graph.splits if graph.ancestors[graph.pre(s)] & splits]


def refine_node(graph: BoundGraph, split: int, x_lo, x_hi, known: Mapping[int, Box], deadline: float,
                settings: BabSettings, workers: SpecWorkers | None = None) -> tuple[dict[int, Box], dict]:
    """`known` with split node `split`'s input bounds tightened by branch and bound over the
    split nodes before it (its specs shared out over `workers` if given); every input of the
    search is taken from `known`, which must hold that input's bounds."""
    p = graph.pre(split)
    lo, hi = known[p]
    idx = torch.nonzero(graph.nodes[split].op.uncertain(lo[0], hi[0])).flatten()
    if idx.numel() == 0:
        return dict(known), {}
    boxes = graph.interval(x_lo, x_hi, dict(known), upto=p)
    target = GraphTarget(graph, p, {i: b for i, b in enumerate(boxes) if b is not None})
    n = idx.numel()
    eye, zeros = selection(idx, graph.nodes[p].size, lo.dtype, lo.device)
    specs = [(eye[0, i:i + 1], zeros[0, i:i + 1]) for i in range(2 * n)]
    pres = [graph.pre(s) for s in target.splits]
    out = search(workers, target, specs, x_lo, x_hi, [boxes[q][0] for q in pres], [boxes[q][1] for q in pres], 0.0,
                 deadline, lambda x: False, settings)
    found = torch.tensor(out.lower, dtype=lo.dtype, device=lo.device)
    new_lo, new_hi = lo.clone(), hi.clone()
    new_lo[0, idx] = torch.fmax(new_lo[0, idx], found[:n])
    new_hi[0, idx] = torch.fmin(new_hi[0, idx], -found[n:])
    return {**known, p: (new_lo, new_hi)}, {**out.stats, "exhausted": out.exhausted}


def refined_bounds(graph: BoundGraph, x_lo, x_hi, known: Mapping[int, Box], alpha_steps: int, layer_budget: float,
                   layers: int, deadline: float, order: str = "gap", on_witness: str = "continue",
                   max_memory: int = BabSettings.max_memory, max_resident: int | None = None,
                   finished: dict | None = None,
                   workers: SpecWorkers | None = None) -> tuple[dict[int, Box], dict]:
    """alpha-CROWN on every relaxed node's input in topological order, with the first `layers`
    refinable split nodes (`refinable`) also refined by branch and bound before the next node is
    bounded: `layer_budget` seconds per refined node on average, shared as refine.layer_shares
    says. Arguments and `finished` (split node -> the bounds its closed search read, skipped
    while they are unchanged) as in refine.refined_bounds. Returns the tightened `known`."""
    stats = {"refine_domains": 0, "refine_time": 0.0}
    chosen = refinable(graph)[:layers]
    shares = layer_shares(len(chosen))
    finished = {} if finished is None else finished
    known = dict(known)
    for r in graph.relaxed:
        if r in finished and _same_bounds(finished[r], known):
            stats["refine_skipped"] = stats.get("refine_skipped", 0) + 1
            continue
        known = layer_bounds(graph, x_lo, x_hi, known, alpha_steps, deadline, nodes=[r])
        if r in chosen and time.perf_counter() < deadline:
            k = chosen.index(r)
            start = time.perf_counter()
            budget = layer_budget * len(shares) * shares[k]
            before = _inputs_of(graph, r, known)
            below = len(split_ancestors(graph, graph.pre(r)))  # split nodes its search may split
            settings = layer_settings(below, on_witness=on_witness, order=order, max_memory=max_memory,
                                      max_resident=max_resident)
            known, st = refine_node(graph, r, x_lo, x_hi, known, min(deadline, start + budget), settings, workers)
            if st.get("exhausted"):
                finished[r] = before
            stats["refine_domains"] += st.get("bab_domains", 0)
            stats["refine_time"] += time.perf_counter() - start
    return known, stats


def _inputs_of(graph: BoundGraph, split: int, known: Mapping[int, Box]) -> dict[int, Box]:
    """Copies of the bounds a refinement of `split` reads: those of the relaxed nodes' inputs
    before it (interval bounds of the rest follow from them and the box)."""
    p = graph.pre(split)
    return {q: (known[q][0].clone(), known[q][1].clone()) for q in (graph.pre(r) for r in graph.relaxed)
            if q in graph.ancestors[p] and q in known}


def _same_bounds(recorded: dict[int, Box], known: Mapping[int, Box]) -> bool:
    """Whether the recorded bounds equal the current ones (then the closed search would repeat)."""
    return all(q in known and torch.equal(b[0], known[q][0]) and torch.equal(b[1], known[q][1])
               for q, b in recorded.items())
