"""The branch and bound stages of a region search, the same on either bound engine: a short
probe search (easy instances end there), refinement of the layer bounds by branch and bound over
earlier splits, per-disjunct bounds under each disjunct's negation, and the final search with
the time left. Which of them run is the plan's call (plan.py).

An engine is a module with the stage functions of `Engine` over its own bounds state:
chain_stage.py (dense ReLU chains, the MLP fast path) and graph_stage.py (any graph).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Protocol

from verifier.result import Result, Status
from verifier.search.run_state import RunState


class Engine(Protocol):
    """What the stages need of an engine module; `state` is its bounds of the run (made by its
    alpha_crown stage) and is updated in place by refinement."""

    def refinable(self, state: Any) -> int:
        """How many layers (split nodes) a refinement can tighten."""

    def refine_pass(self, run: RunState, state: Any, per_layer: float, layers: int, end: float, finished: dict,
                    workers=None) -> dict:
        """One refinement pass over the first `layers` refinable layers; returns its stats."""

    def prove(self, run: RunState, state: Any) -> None:
        """alpha-CROWN on each open disjunct with the state's bounds."""

    def constrained(self, run: RunState, state: Any, d: int, deadline: float) -> tuple[Any, float]:
        """Disjunct d's own bounds under its negation (output constraints) and the bound on d
        they give (inf where they cross: nothing violates d by more than the tolerance)."""

    def bab_search(self, run: RunState, state: Any, disjuncts: list[int], deadline: float,
                   per_disjunct: dict | None = None, workers=None):
        """One branch and bound over the disjuncts; the evidence of a violation or None.
        `per_disjunct` is `constrain`'s result."""


def spec_workers(options):
    """Helper processes for the searches (option `processes`), started now so that they import
    while this process works; None for one process. The caller closes them."""
    from verifier.bab.parallel import SpecWorkers

    if options.processes <= 1:
        return None
    try:
        return SpecWorkers(options.processes)
    except (OSError, RuntimeError, ValueError):  # no process support here (e.g. a daemonic parent)
        return None


def bab_stages(run: RunState, engine: Engine, state, order: list[int],
               exact_stage: Callable[[float], Result | None] | None = None) -> Result:
    """The stages (module docstring) with helper processes for their searches. `exact_stage`,
    where given, runs after the probe with `options.mip_stage_share` of the time left (the MIP
    on small networks, search/region.py) and its decision, if one, ends the run."""
    workers = spec_workers(run.options)
    try:
        return _stages(run, engine, state, order, workers, exact_stage)
    finally:
        if workers is not None:
            workers.close()


def _stages(run: RunState, engine: Engine, state, order: list[int], workers, exact_stage) -> Result:
    plan, options = run.plan, run.options
    for stage in ("probe", "refined") if plan.probe else ("refined",):
        if stage == "refined" and exact_stage is not None and run.open():
            decided = exact_stage(options.mip_stage_share * run.remaining())
            if decided is not None:
                return decided
        if stage == "refined" and plan.refine_share > 0:
            began = time.perf_counter()
            refine(run, engine, state, plan.refine_share * run.remaining(), workers)
            run.note("refinement", began)
            if not run.open():
                return run.result(Status.ROBUST, "bounds")
        per_disjunct = None
        if stage == "refined" and plan.output_bounds:
            per_disjunct = constrain(run, engine, state, [d for d in order if d in run.open()],
                                     options.output_bound_budget * run.remaining())
            if not run.open():
                return run.result(Status.ROBUST, "bounds")
        share = options.bab_probe if stage == "probe" else 1.0
        began = time.perf_counter()
        evidence = engine.bab_search(run, state, [d for d in order if d in run.open()],
                                     time.perf_counter() + share * run.remaining(), per_disjunct, workers)
        run.note(f"{stage} search", began)
        if evidence is not None:
            return run.result(Status.ADVERSARIAL, "bab", evidence)
        if not run.open():
            return run.result(Status.ROBUST, "bab")
    return run.result(Status.UNKNOWN, "timeout" if run.remaining() <= 0 else "bab")


def refine(run: RunState, engine: Engine, state, budget: float, workers=None) -> None:
    """Refine the layer bounds by branch and bound over earlier splits (up to `refine_layers`
    layers) and bound the open disjuncts again, in passes of doubling length (2 s per layer
    first) within `budget` seconds: an instance that a short refinement already proves does not
    pay for a long one, and each pass starts from the bounds the last reached. A pass that gains
    less than the plan's stall share of the worst open bound ends the refinement."""
    layers = min(run.options.refine_layers, engine.refinable(state))
    if layers <= 0:
        return
    end = time.perf_counter() + budget
    per_layer = run.options.refine_first_pass
    worst = -math.inf
    finished: dict = {}  # layers whose search closed every domain (see refine.refined_bounds)
    while run.open() and time.perf_counter() < end:
        began = time.perf_counter()
        per_layer = min(per_layer, (end - time.perf_counter()) / layers)
        stats = engine.refine_pass(run, state, per_layer, layers, end, finished, workers)
        for key, value in stats.items():
            run.stats[key] = round(run.stats.get(key, 0) + value, 4)
        if stats.get("refine_skipped", 0) >= layers:  # every refined layer finished: nothing left to gain
            break
        engine.prove(run, state)
        run.note("refinement pass", began, per_layer=per_layer, domains=stats.get("refine_domains", 0),
                 skipped=stats.get("refine_skipped", 0))
        per_layer *= 2
        before, worst = worst, run.worst_open()
        if math.isfinite(before) and worst - before < run.plan.refine_stall * abs(before):
            run.stats["refine_stalled"] = 1
            break


def constrain(run: RunState, engine: Engine, state, disjuncts: list[int], budget: float) -> dict:
    """Per open disjunct, bounds valid where it is not yet proven (the engine's `constrained`)
    within `budget` seconds; what they prove is recorded, capped (RunState.prove_constrained),
    and a disjunct they prove is left out. Returns {d: (bounds, constrained)}: a disjunct
    reached after the budget gets (None, False), the state's plain bounds, whose search results
    need no capping."""
    start = time.perf_counter()
    end = start + budget
    out = {}
    for d in disjuncts:
        if time.perf_counter() > end:
            out[d] = (None, False)
            continue
        bounds, value = engine.constrained(run, state, d, end)
        run.prove_constrained(d, value)
        if not value > run.options.tolerance:
            out[d] = (bounds, True)
    run.stats["time_output_bounds"] = round(run.stats.get("time_output_bounds", 0) + time.perf_counter() - start, 4)
    return out
