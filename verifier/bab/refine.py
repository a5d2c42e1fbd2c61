"""Intermediate bounds refined by branch and bound: the bounds of a ReLU layer's unstable
neurons, each proven (or tightened) over splits of the layers before it.

On deep networks the final bound is poor mainly because early layers' relaxations compound;
fixing a neuron of layer 2 needs only the few dozen unstable ReLUs of layer 1 split. MILP
solvers do this per neuron (one MIP each, seconds apiece here); running it as one branch and
bound over all of a layer's neurons at once (each bound direction a spec) reuses the batched
engine, and every bound it reports is valid however early the budget stops it.

A spec refuted by a real point (the neuron really is unstable that way) is still split: its
bound cannot reach 0, but a tighter one still narrows the neuron's relaxation. Which domain goes
next is the one whose spec has the largest share of its gap still open, the gap ending at 0 or
at the least real value seen, whichever is lower — so a spec near what real points reach yields
to those that can still move or close. Splitting refuted specs in the plain order lets specs
that cannot move take the effort; with the gap order, deep chains end tighter than by dropping
them (measured on mnistfc 256x4, see benchmarks/RESULTS.md, "Why the defaults are what they
are"). On two ReLU layers dropping them, with the relative order, is better (search.plan picks
per depth).
With splitting continued, a domain whose bound reaches the least real value seen for its spec
is closed (splitting it cannot raise the spec's bound), and a layer whose domains are all
closed ends early (the pass, and so the next one, starts sooner).
"""

from __future__ import annotations

import time

import torch

from verifier.bab.crown import intermediate_bounds
from verifier.bab.layered import Layered
from verifier.bab.parallel import SpecWorkers, search
from verifier.bab.search import BabSettings


def refine_layer(net: Layered, k: int, x_lo, x_hi, lower: list, upper: list, deadline: float,
                 settings: BabSettings, workers: SpecWorkers | None = None) -> tuple[list, list, dict]:
    """Tighter (1, n_k) bounds of ReLU layer k by branch and bound over layers < k (its specs
    shared out over `workers`' processes if given)."""
    idx = torch.nonzero((lower[k][0] < 0) & (upper[k][0] > 0)).flatten()
    if idx.numel() == 0 or k == 0:
        return lower, upper, {}
    w, b = net.weights[k], net.biases[k]
    sub = Layered(net.weights[:k] + [w], net.biases[:k] + [b], net.pre_nodes[:k])
    specs = [(w[j][None], b[j][None]) for j in idx] + [(-w[j][None], -b[j][None]) for j in idx]
    out = search(workers, sub, specs, x_lo, x_hi, lower[:k], upper[:k], 0.0, deadline, lambda x: False, settings)
    n = idx.numel()
    found = torch.tensor(out.lower, dtype=lower[k].dtype)
    new_lo, new_hi = lower[k].clone(), upper[k].clone()
    new_lo[0, idx] = torch.fmax(new_lo[0, idx], found[:n])
    new_hi[0, idx] = torch.fmin(new_hi[0, idx], -found[n:])
    lower, upper = list(lower), list(upper)
    lower[k], upper[k] = new_lo, new_hi
    return lower, upper, {**out.stats, "exhausted": out.exhausted}


def layer_shares(layers: int) -> list[float]:
    """Share of a pass's time for refined layers 1..layers: (layers + 1 - k)^2, normalised.
    Early layers first, since every later layer's relaxation rests on them; falling squares beat
    equal, rising and falling linear shares (measured on mnistfc 256x6 and 256x4, see
    benchmarks/RESULTS.md, "Why the defaults are what they are")."""
    weights = [(layers + 1 - k) ** 2 for k in range(1, layers + 1)]
    return [w / sum(weights) for w in weights]


def layer_settings(k: int, **kwargs) -> BabSettings:
    """The search settings for refining ReLU layer k: its search splits the k layers before it.
    With one (k = 1) a domain's bound is near its LP after a few warm-started steps and the
    search needs many domains, as in the final search on one hidden layer: gap branching, 4
    steps. With more, the gap estimate misjudges which split pays, and trying 16 candidates for
    real beats trying 4 (measured on mnistfc 256x6, see benchmarks/RESULTS.md, "Why the defaults
    are what they are")."""
    if k == 1:
        return BabSettings(steps=4, branching="gap", **kwargs)
    return BabSettings(steps=8, branching="trial", candidates=16, **kwargs)


def refined_bounds(net: Layered, x_lo, x_hi, lower: list, upper: list, alpha_steps: int,
                   layer_budget: float, layers: int, deadline: float, order: str = "gap",
                   on_witness: str = "continue", max_memory: int = BabSettings.max_memory,
                   max_resident: int | None = None, finished: dict | None = None,
                   workers: SpecWorkers | None = None) -> tuple[list, list, dict]:
    """alpha-CROWN layer by layer, with the first `layers` layers after the first also refined
    by branch and bound before the next layer is bounded: `layer_budget` seconds per layer on
    average, shared as `layer_shares` says, its open domains within `max_memory` bytes and the
    process within `max_resident` like the final search's. `order` and `on_witness` as in
    BabSettings; the defaults are the measured best (module docstring).

    `finished`, kept by the caller over passes, maps a layer whose search closed every domain to
    the bounds of the layers before it then; while those are unchanged the layer is skipped, as
    rerunning would only repeat it, seconds per pass (measured on mnistfc 256x6, see
    benchmarks/RESULTS.md, "Why the defaults are what they are"). `workers` shares each layer's
    specs out over processes."""
    stats = {"refine_domains": 0, "refine_time": 0.0}
    shares = layer_shares(min(layers, net.depth - 1))
    finished = {} if finished is None else finished
    for k in range(1, net.depth):
        if _same_bounds(finished.get(k), lower[:k], upper[:k]):
            stats["refine_skipped"] = stats.get("refine_skipped", 0) + 1
            continue
        lower, upper = intermediate_bounds(net, x_lo, x_hi, lower, upper, alpha_steps, deadline, only=k)
        if k <= layers and time.perf_counter() < deadline:
            start = time.perf_counter()
            budget = layer_budget * len(shares) * shares[k - 1]
            before = ([t.clone() for t in lower[:k]], [t.clone() for t in upper[:k]])
            settings = layer_settings(k, on_witness=on_witness, order=order, max_memory=max_memory,
                                      max_resident=max_resident)
            lower, upper, st = refine_layer(net, k, x_lo, x_hi, lower, upper, min(deadline, start + budget), settings,
                                            workers)
            if st.get("exhausted"):
                finished[k] = before
            stats["refine_domains"] += st.get("bab_domains", 0)
            stats["refine_time"] += time.perf_counter() - start
    return lower, upper, stats


def _same_bounds(recorded: tuple[list, list] | None, lower: list, upper: list) -> bool:
    """Whether the recorded bounds of the earlier layers equal these (nothing else a layer's
    refinement reads changes between passes)."""
    if recorded is None:
        return False
    return all(torch.equal(a, b) for a, b in zip(recorded[0] + recorded[1], list(lower) + list(upper)))
