"""The bisection search (L-infinity): decide eps-balls with the full verifier and halve the gap.

Each step asks the verifier (bounds, attack, branch and bound or MIP) about the ball of radius
r: `robust` proves the minimum distortion is above r; `adversarial` gives an example whose own
distance (at most r) becomes the new upper end. It inherits everything the eps-ball verifier
does well (bound propagation on deep chains), at the price of one verification per halving.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from verifier.distortion.direct import SearchOutcome, gap_closed
from verifier.distortion.examples import Checker, Example, ball
from verifier.options import VerifyOptions
from verifier.result import Status
from verifier.search.region import check_region
from verifier.spec.property import InputRegion

# The margin a ball's proof must clear. Smaller than the verifier's default so that bisection
# can close the gap to ~1e-7 relative; the bound engines' own slacks keep proofs sound.
_TOLERANCE = 1e-8
_SLICES = (0.25, 0.5)  # shares of the time left for a radius's first and second try
_TRY_FACTOR, _TRY_FLOOR = 4.0, 2.0  # a first try's cap: times the longest decided try, at least seconds
_BELOW_UNDECIDED = 3  # tries below an undecided radius: 7/8 of the way up to it, then stop


def bisection_search(checker: Checker, upper: Example | None, deadline: float, options: VerifyOptions,
                     rel_gap: float, abs_gap: float, slices: tuple[float, ...] = _SLICES,
                     lower: float = 0.0) -> SearchOutcome:
    """slices: shares of the time left that a radius gets, one per try (see `decide`); `lower`:
    a radius already proven robust (the search starts above it).

    Anytime: a radius the verifier cannot decide is not the end. It bounds the radii still worth
    trying from above, and the search goes on below it, raising the proven lower bound, until
    two radii in a row are undecided or the gap to the undecided one is within the tolerance. A
    try is also cut short at `_TRY_FACTOR` times the longest decided try so far (at least
    `_TRY_FLOOR` s): a radius that takes far longer than the others lies close to the answer,
    where the MILP that follows in the hybrid strategy does better than more verifier time. Below
    an undecided radius the search takes `_BELOW_UNDECIDED` tries, not more: squeezing the lower
    bound up to a radius that is not the answer costs a verification per halving."""
    x0, goal = checker.x0, checker.goal
    stats: dict = {"strategy": "bisection", "verifications": 0}
    reach = checker.reach
    best = upper
    longest = 0.0  # the longest verification that decided its radius

    def decide(radius: float):
        # Slices of the time left: near the true distance a ball may be too close to call, and
        # that must not eat all the time; an unknown gets a second, longer try.
        nonlocal longest
        region = InputRegion(ball(checker.box, x0, radius), goal.disjuncts)
        result = None  # no time left: undecided
        for k, share in enumerate(slices):
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            stats["verifications"] += 1
            budget = max(share * left, min(1.0, left))
            if k == 0 and longest > 0:
                budget = min(budget, max(_TRY_FLOOR, _TRY_FACTOR * longest))
            settings = replace(options, timeout=budget, exact=False,
                               tolerance=min(options.tolerance, _TOLERANCE))
            began = time.perf_counter()
            result = check_region(checker.net, region, x0, settings, label=goal.label)
            if result.status != Status.UNKNOWN:
                longest = max(longest, time.perf_counter() - began)
                break
        return result

    if best is None:  # no example yet: the whole input set first
        if not np.isfinite(reach) or deadline - time.perf_counter() <= 0:
            return SearchOutcome(lower, None, stats=stats)
        r = decide(reach)
        if r is not None and r.status == Status.ROBUST:
            return SearchOutcome(np.inf, None, infeasible=True, stats=stats)
        if r is None or r.status != Status.ADVERSARIAL or (best := checker.confirm(r.counterexample)) is None:
            return SearchOutcome(lower, None, stats=stats)
    undecided, misses, below = None, 0, 0  # least undecided radius; undecided in a row; tries below it
    while not gap_closed(best, lower, rel_gap, abs_gap) and deadline - time.perf_counter() > 0:
        top = best.distance if undecided is None else undecided
        if undecided is not None and (top - lower <= abs_gap + rel_gap * top or below >= _BELOW_UNDECIDED):
            break
        below += undecided is not None
        radius = (lower + top) / 2.0
        r = decide(radius)
        if r is None:
            break
        if r.status == Status.ROBUST:
            lower, misses = radius, 0
        elif r.status == Status.ADVERSARIAL and (ex := checker.confirm(r.counterexample)) is not None:
            best = ex if ex.distance < best.distance else best
            misses = 0
            if undecided is not None and best.distance < undecided:
                undecided, below = None, 0
            if ex.distance >= radius * (1 + 1e-12) + 1e-15:  # float32 rounding stepped outside
                break
        else:  # unknown: too close to call; radii below it may still be proven
            undecided, misses = radius, misses + 1
            if misses >= 2:
                break
    stats["undecided_radius"] = undecided
    return SearchOutcome(lower, best, stats=stats)
