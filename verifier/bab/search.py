"""Branch and bound over ReLU splits, bounded by beta-CROWN, for the disjuncts of a property.

A subproblem ("domain") belongs to one disjunct (spec) and fixes some unstable ReLUs to a side.
Its lower bound comes from the target problem's walk (graph_problem.py: the bound engine's
walker over the graph; chain_problem.py: the dense chain's fast path) with slopes and split
multipliers optimised by a few Adam steps, warm-started from the parent; domains whose bound
exceeds the tolerance are closed. Each round splits the first open domains in the queue's order
(for verification the lowest bounds; see BabSettings.order) — of all disjuncts at once, since on
a CPU a round costs little more for many domains than for a few — on the neuron chosen by
`branching.py` (by default: the best few by relaxation gap, each tried for real). Each bound
also yields the box corner where its linear lower bound is least; it is run through the real
network as a cheap attack.

The minimum over a disjunct's open domains is a valid lower bound at every moment, so a run
cut short still reports sound bounds; only an empty queue is a proof.
"""

from __future__ import annotations

import heapq
import itertools
import math
import operator
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from verifier.bab.branching import choose_by_gap, choose_by_trial
from verifier.bab.packing import STORED, Packing
from verifier.bounds.walker import EXACT, FAST, Bound, minimiser
from verifier.deadline import fits
from verifier.resources import resident_bytes


@dataclass(slots=True)
class Domain:
    """An open subproblem, stored compactly: two tensors of its own (not views that would pin
    a whole batch's storage): far less memory than per-layer views (measured on mnistfc
    256x4, see benchmarks/RESULTS.md, "Why the defaults are what they are"); over the entries
    that can differ between domains only (packing.py)."""

    spec: int
    signs: torch.Tensor  # (kept,) int8 over the packing's entries, in the problem's order of split
    #                      nodes: -1 active, +1 inactive, 0 free
    params: torch.Tensor  # (2, m, kept) float16: alphas, then betas
    branch: tuple[int, int]  # (k, entry): the k-th split node of the problem and its entry, split next
    bound: float  # its proven lower bound


@dataclass
class BabOutcome:
    status: str  # "proved", "counterexample" or "unknown"
    lower: list[float]  # per spec: proven lower bound on its slack over the box
    x: np.ndarray | None = None  # confirmed counterexample
    stats: dict = field(default_factory=dict)
    # Every domain closed, dropped or a leaf with its exact LP value; not stopped by time or memory:
    # the same inputs give the same bounds.
    exhausted: bool = False
    # A search stopped at `handoff` domains: its open domains, for other searches to take on
    # (parallel.py). `lower` then covers only the domains it closed or left as leaves, and
    # `exhausted` says only that no leaf went without its LP.
    open: list[Domain] = field(default_factory=list)


@dataclass
class BabSettings:
    batch: int = 256  # domains split per round
    steps: int = 12  # Adam steps on alpha and beta per round
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    # Open domains are kept while they fit in this many bytes (about a million of a small MLP's
    # domains, see domain_bytes); past it the search stops with the bounds it has.
    max_memory: int = 2_500_000_000
    # The process's resident memory (verifier/resources.py) past which the search stops too,
    # whatever the queue's estimate says; None: no such limit.
    max_resident: int | None = None
    # On a real point at or below 0: "stop" with it (verification). In bound refinement, "drop"
    # the spec (it cannot be proven, but the others can) or "continue" splitting it: a tighter
    # bound on a truly unstable neuron still narrows its relaxation (measured, see refine.py);
    # a domain then closes once its bound reaches the least real value seen for its spec.
    on_witness: str = "stop"
    # Which open domains go first: "lowest" bound (verification: the worst spec decides);
    # "relative": lowest bound as a share of its spec's root bound, so that all specs progress
    # alike; "gap": the largest share of its spec's gap still open, where the gap ends at the
    # tolerance or at the least real value seen if lower — so a spec whose bound nears what a
    # real point reaches yields to the others (bound refinement, see refine.py). Keys are fixed
    # when a domain is queued: a better real value counts for the domains queued after it.
    order: str = "lowest"
    branching: str = "trial"  # "gap" or "trial" (see branching.py)
    candidates: int = 4  # neurons tried per domain by "trial"
    rank: str = "weaker"  # which child ranks a "trial" candidate: "weaker" or "stronger"

    def __post_init__(self) -> None:
        # A mistyped word would silently change what the search does (e.g. never return a
        # counterexample), so refuse it.
        for name, allowed in (("on_witness", ("stop", "drop", "continue")),
                              ("order", ("lowest", "relative", "gap")), ("branching", ("gap", "trial")),
                              ("rank", ("weaker", "stronger"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"BabSettings.{name}={getattr(self, name)!r}: expected one of {allowed}")


def _order_key(order: str, value: float, spec: int, scale: list, best_real: list,
               tolerance: float) -> float:
    """Heap key of an open domain (lowest first), see BabSettings.order. A spec whose bound
    is not finite goes first under the ratio orders (its share cannot be computed)."""
    if order != "lowest" and not (math.isfinite(value) and math.isfinite(scale[spec])):
        return -math.inf
    if order == "relative":
        return value / scale[spec]
    if order == "gap":
        # The share of the spec's gap still open: from its bound up to what can still be reached
        # (the tolerance, or the least real value seen if lower), over the same at the root.
        target = min(best_real[spec], tolerance)
        root = -scale[spec]
        return -(target - value) / max(target - root, 1e-9)
    return value


def add_stats(total: dict, stats: dict) -> None:
    """Add a search's stats into `total`: counts add up over searches (and over a search's
    shares); the queue cap and the memory-full flag take the max."""
    for key, value in stats.items():
        combine = max if key in ("bab_max_queue", "bab_memory_full") else operator.add
        total[key] = combine(total.get(key, 0), value)


def least_bounds(lower: list[float], domains) -> list[float]:
    """`lower` (one bound per spec) with each domain's bound folded into its spec's least: the
    bounds that hold while those domains are open."""
    out = list(lower)
    for dom in domains:
        out[dom.spec] = min(out[dom.spec], dom.bound)
    return out


def domain_bytes(neurons: int, rows: int) -> int:
    """Memory of one queued domain keeping `neurons` entries (packing.py): its sign and
    parameter tensors, and ~1.2 KB of object overhead (measured, see benchmarks/RESULTS.md, "Why
    the defaults are what they are")."""
    return neurons + 2 * rows * neurons * STORED.itemsize + 1200


def branch_and_bound(net, specs: list[tuple[torch.Tensor, torch.Tensor]], x_lo, x_hi,
                     lower: list, upper: list, tolerance: float, deadline: float,
                     is_counterexample: Callable[[np.ndarray], bool],
                     settings: BabSettings | None = None, start: list[Domain] | None = None,
                     handoff: int | None = None) -> BabOutcome:
    """Prove, for every spec (rows R and constants c on the value v the search is about), that
    min over the box of max_r (R v(x) + c)_r > tolerance — or (on_witness="stop") find x with it
    <= 0 for one.

    `net` is what the search runs on: a dense chain (bab/layered.py; v is its last hidden layer)
    or a GraphTarget (graph_problem.py; v is its start node); its `problem` holds the search's
    data. lower/upper are root bounds of every split node's input, (1, n_k) or one row per
    spec (S, n_k); `is_counterexample`
    confirms a candidate independently (e.g. with onnxruntime on the original model).

    `start`: open domains of an earlier search with the same inputs (its BabOutcome.open) to
    go on from instead of the root; `handoff`: stop once this many domains are open and hand
    them back (BabOutcome.open). Both serve one spec's domains shared over processes
    (parallel.py), and take the "lowest" order only: its keys need no root bound.
    """
    settings = settings or BabSettings()
    if (start is not None or handoff is not None) and settings.order != "lowest":
        raise ValueError(f"a search started from or handing off domains needs order='lowest', not {settings.order!r}")
    n_specs = len(specs)
    stats = {"bab_rounds": 0, "bab_domains": n_specs, "bab_leaves_open": 0, "bab_candidates": 0,
             "bab_leaf_lps": 0}
    if time.perf_counter() >= deadline:  # setting the problem up alone takes a pass's time on a CNN
        # Given domains keep their bounds; a search from the root has proven nothing.
        lower_bounds = [-np.inf] * n_specs if start is None else least_bounds([np.inf] * n_specs, start)
        return BabOutcome("unknown", lower_bounds, None, {**stats, "bab_domains": 0})
    problem = net.problem(specs, x_lo, x_hi, lower, upper)
    m = problem.m
    dev = x_lo.device  # domains live where the problem's tensors do
    sizes = [l.shape[1] for l in problem.lower]
    packing = Packing(problem.free())
    unsolved_leaves = [0]  # leaves left without an exact LP value (no time, or the LP failed)
    tie = itertools.count()
    queue: list = []  # (bound, tie, Domain)
    leaves: list[tuple[int, float]] = []  # domains with nothing left to split, still open
    closed = [np.inf] * n_specs  # least bound among each spec's closed domains
    dropped = [np.inf] * n_specs  # on_witness="drop": least bound among refuted specs' domains
    refuted: set[int] = set()  # on_witness="drop": specs a real point refutes, no longer split
    best_real = [math.inf] * n_specs  # least real slack seen per spec (the "gap" order; closing in "continue")

    overhead = [0.0]  # seconds per domain of a round's work after its bound, trial excluded (measured)
    trial_seconds = [0.0]  # the last round's branching trial

    def choose(spec_ids, best, alphas, betas, out, lower, upper, signs) -> dict[int, tuple[int, int] | None]:
        """The branching choice of each domain that stays open (closed ones need none; the
        trial rule costs a bound pass per candidate, so it is not spent on them)."""
        keep = [i for i, (spec, value) in enumerate(zip(spec_ids.tolist(), best.tolist()))
                if value <= tolerance and spec not in refuted]
        if not keep:
            return {}
        idx = torch.tensor(keep, device=dev)
        pick = lambda ts: [t[idx] for t in ts]  # noqa: E731
        sub = Bound(out.value[idx], out.lam0[idx], pick(out.mus))
        trial_seconds[0] = 0.0
        trial = problem.pass_seconds(len(keep) * 2 * settings.candidates, dtype=FAST)
        if settings.branching == "trial" and fits(deadline, trial + overhead[0] * len(spec_ids)):
            began = time.perf_counter()
            picked = choose_by_trial(problem, spec_ids[idx], sub, pick(lower), pick(upper), pick(alphas),
                                     pick(betas), pick(signs), settings.candidates, settings.rank)
            trial_seconds[0] = time.perf_counter() - began
        else:
            picked = choose_by_gap(problem, sub, pick(lower), pick(upper), pick(alphas))
        return dict(zip(keep, picked))

    def absorb(spec_ids, best, alphas, betas, out, lower, upper, signs) -> np.ndarray | None:
        """Check the batch's corner points, then queue the domains still open."""
        corners = minimiser(out.lam0, x_lo, x_hi)  # (B, m, n0)
        flat = corners.reshape(-1, corners.shape[-1])
        row_specs = spec_ids.repeat_interleave(m)
        slack = problem.slack(row_specs, flat)
        seen = torch.full((n_specs,), torch.inf, dtype=EXACT, device=dev).scatter_reduce_(
            0, row_specs, torch.nan_to_num(slack.to(EXACT), nan=torch.inf), "amin")
        best_real[:] = map(min, best_real, seen.tolist())
        for i in torch.nonzero(slack <= 0).flatten().tolist():
            stats["bab_candidates"] += 1
            if settings.on_witness == "drop":
                refuted.add(int(row_specs[i]))
            elif settings.on_witness == "stop" and is_counterexample(flat[i].cpu().numpy()):
                return flat[i].cpu().numpy()
        choices = choose(spec_ids, best, alphas, betas, out, lower, upper, signs)
        packed = None  # the batch's signs and parameters as (B, N) and (B, 2, m, N), once needed
        for i, (spec, value) in enumerate(zip(spec_ids.tolist(), best.tolist())):
            if value > tolerance:
                closed[spec] = min(closed[spec], value)
            elif spec in refuted:
                dropped[spec] = min(dropped[spec], value)
            elif settings.on_witness == "continue" and value >= best_real[spec]:
                # A real point of the spec lies at or below this bound, so splitting here
                # cannot raise the spec's reported bound (the min over its domains): done.
                closed[spec] = min(closed[spec], value)
            elif choices[i] is None and not fits(deadline, problem.leaf_seconds()):
                leaves.append((spec, value))  # no time left for its LP
                unsolved_leaves[0] += 1
            elif choices[i] is None:
                exact, x = problem.leaf(spec, [s[i] for s in signs], [l[i] for l in lower], [u[i] for u in upper],
                                        max(deadline - time.perf_counter(), 0.1))
                stats["bab_leaf_lps"] += 1
                leaf_slack = math.nan  # the LP minimiser's real slack (NaN: no point)
                if x is not None:
                    leaf_slack = float(problem.slack(torch.tensor([spec], device=dev),
                                                     torch.as_tensor(x, device=dev)[None])[0])
                if not math.isnan(leaf_slack):
                    best_real[spec] = min(best_real[spec], leaf_slack)
                if leaf_slack <= 0:
                    stats["bab_candidates"] += 1
                    if settings.on_witness == "stop" and is_counterexample(x):
                        return x
                if exact > tolerance:
                    closed[spec] = min(closed[spec], exact)
                else:
                    leaves.append((spec, max(value, exact)))  # final unless the LP gave no bound
                    unsolved_leaves[0] += not math.isfinite(exact)
            else:
                if packed is None:
                    packed = (packing.signs(signs), packing.params(alphas, betas))
                dom = Domain(spec, packed[0][i].clone(), packed[1][i].clone(), choices[i], value)
                key = _order_key(settings.order, value, spec, scale, best_real, tolerance)
                heapq.heappush(queue, (key, next(tie), dom))
        return None

    if start is not None:
        scale = [1.0] * n_specs  # unused by the "lowest" order
        stats["bab_domains"] = 0  # counted where they were bounded
        for dom in start:
            heapq.heappush(queue, (dom.bound, next(tie), dom))
        found = None
    else:
        if not fits(deadline, problem.pass_seconds(n_specs)):  # no time for even the root's bound
            return BabOutcome("unknown", [-np.inf] * n_specs, None, stats)
        spec_ids = torch.arange(n_specs, device=dev)
        signs = [torch.zeros((n_specs, n), dtype=torch.int8, device=dev) for n in sizes]
        alphas = problem.default_alphas(spec_ids)
        betas = [torch.zeros((n_specs, m, n), dtype=FAST, device=dev) for n in sizes]
        root = problem.bound(spec_ids, signs, alphas, betas, settings, deadline)
        if not fits(deadline, problem.pass_seconds(2 * min(settings.batch, n_specs))):
            # No round would fit after it, so branching and the corner checks (seconds on a CNN's
            # thousands of specs) would be spent for nothing: the root's bounds are the answer.
            values = [float(v) for v in root[0].tolist()]
            proved = all(v > tolerance for v in values)
            return BabOutcome("proved" if proved else "unknown", values, None, stats)
        scale = [max(-v, 1e-9) for v in root[0].tolist()]
        found = absorb(spec_ids, *root, signs)
    starts = np.cumsum([0] + sizes)  # flat index of each layer's first neuron
    max_queue = settings.max_memory // domain_bytes(packing.kept, m)
    stats["bab_max_queue"] = int(max_queue)
    handing = False  # stopped at `handoff` open domains, to hand them off
    while queue and found is None:
        if handoff is not None and len(queue) >= handoff:
            handing = True
            break
        domains = 2 * min(settings.batch, len(queue))
        if not fits(deadline, problem.pass_seconds(domains) + overhead[0] * domains):
            break  # a round's float64 pass, which it cannot skip, would end past the deadline
        if len(queue) > max_queue or (settings.max_resident is not None
                                      and (resident_bytes() or 0) > settings.max_resident):
            stats["bab_memory_full"] = 1
            break
        picked = []
        while queue and len(picked) < settings.batch:
            dom = heapq.heappop(queue)[2]
            if dom.spec in refuted:
                dropped[dom.spec] = min(dropped[dom.spec], dom.bound)
            else:
                picked.append(dom)
        if not picked:
            break
        # (2P, N): first all -1 children, then +1
        flat_signs = packing.full_signs(torch.stack([d.signs for d in picked] * 2))
        split = torch.tensor([int(starts[d.branch[0]]) + d.branch[1] for d in picked] * 2, device=dev)
        side = torch.tensor([-1] * len(picked) + [1] * len(picked), dtype=torch.int8, device=dev)
        flat_signs[torch.arange(split.numel(), device=dev), split] = side
        params = packing.full_params(torch.stack([d.params for d in picked] * 2), FAST)  # (2P, 2, m, N)
        spec_ids = torch.tensor([d.spec for d in picked] * 2, device=dev)
        signs = list(flat_signs.split(sizes, dim=-1))
        alphas = list(params[:, 0].split(sizes, dim=-1))
        betas = list(params[:, 1].split(sizes, dim=-1))
        # The bound's steps leave time for what follows it in the round: its corners' check, the
        # branching and the queueing (measured per domain on the last round; a trial is checked
        # on its own).
        value, *rest = problem.bound(spec_ids, signs, alphas, betas, settings, deadline - overhead[0] * domains)
        began = time.perf_counter()
        # A child lies inside its parent, so the parent's bound holds for it too: with the max,
        # the reported bound never falls as the search goes on (a fresh child bound can come out
        # below its parent's when the warm-started steps land worse).
        parents = torch.tensor([d.bound for d in picked] * 2, dtype=value.dtype, device=dev)
        found = absorb(spec_ids, torch.maximum(value, parents), *rest, signs)
        overhead[0] = max(time.perf_counter() - began - trial_seconds[0], 0.0) / domains
        stats["bab_rounds"] += 1
        stats["bab_domains"] += split.numel()
    stats["bab_leaves_open"] = len(leaves)
    if found is not None:
        return BabOutcome("counterexample", [-np.inf] * n_specs, found, stats)
    lower_bounds = [min(c, d) for c, d in zip(closed, dropped)]
    for spec, value in leaves:
        lower_bounds[spec] = min(lower_bounds[spec], value)
    if handing:  # (a search stopped by time or memory keeps its domains: their bounds are its answer)
        handed = [dom for _, _, dom in sorted(queue, key=operator.itemgetter(0, 1))]
        stats["bab_handed_off"] = len(handed)
        return BabOutcome("unknown", [float(v) for v in lower_bounds], None, stats,
                          exhausted=not unsolved_leaves[0], open=handed)
    lower_bounds = least_bounds(lower_bounds, (dom for _, _, dom in queue))
    proved = not queue and not leaves and not refuted and all(v > tolerance for v in lower_bounds)
    status = "proved" if proved else "unknown"
    return BabOutcome(status, [float(v) for v in lower_bounds], None, stats, exhausted=not queue and not unsolved_leaves[0])
