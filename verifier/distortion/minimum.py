"""`min_distortion`: the smallest perturbation, in a norm, that moves the decision to a target.

Flow: the sample itself (distance 0 if already adversarial) -> an attack for an upper bound ->
the exact search: `direct` (one MILP with the norm as objective), `bisection` (eps-ball
verifications, L-infinity only) or `hybrid` (linf: bisection first, then the MILP inside the
interval it proved). `auto` picks hybrid for linf and direct otherwise; benchmarks/RESULTS.md
has the measurements behind that. Anytime: when time runs out, `lower` is still certified and
`upper` is the best example's distance.
"""

from __future__ import annotations

import os
import time

import numpy as np

from verifier.api import _options, check_label, load
from verifier.distortion.bisection import bisection_search
from verifier.distortion.direct import SearchOutcome, direct_search, gap_closed
from verifier.distortion.examples import Checker, attack_upper
from verifier.distortion.goal import make_goal
from verifier.distortion.norms import check_norm, measure
from verifier.distortion.result import DistortionResult
from verifier.errors import InputError
from verifier.network.graph import Network
from verifier.options import VerifyOptions
from verifier.spec.ball import InputBox, linf_ball

STRATEGIES = ("auto", "direct", "bisection", "hybrid")
_HYBRID_BISECTION = 0.4  # share of the time the hybrid strategy gives bisection before the MILP


def _input_set(flat: np.ndarray, eps_max, domain) -> InputBox:
    if eps_max is not None:
        try:
            eps_max = float(eps_max)
        except (TypeError, ValueError):
            raise InputError(f"eps_max must be a number, got {eps_max!r}") from None
        return linf_ball(flat, eps_max, domain)
    linf_ball(flat, 0.0, domain)  # checks that the sample lies in the domain
    if domain is None:
        return InputBox(np.full(flat.size, -np.inf), np.full(flat.size, np.inf))
    return InputBox(np.full(flat.size, float(domain[0])), np.full(flat.size, float(domain[1])))


def min_distortion(net: Network | str | os.PathLike, x: np.ndarray, norm: str = "linf", label: int | None = None,
                   targets=None, eps_max: float | None = None, timeout: float | None = None, strategy: str = "auto",
                   rel_gap: float = 1e-5, abs_gap: float = 1e-7,
                   options: VerifyOptions | None = None, solver: str | None = None,
                   robust_radius: float | None = None, counterexample: np.ndarray | None = None) -> DistortionResult:
    """The minimum distortion of x (in `norm`: linf, l1, l2, l0) that makes the network decide
    for one of `targets` (default: any class but `label`; ties count), within eps_max (an
    L-infinity ball; None: the whole domain) and the domain.

    status "optimal": lower and upper agree to rel_gap (and abs_gap; l0: exactly);
    "infeasible": no adversarial example in the input set; "unknown": time ran out, with lower
    certified and upper the distance of `example` (re-checked by onnxruntime). solver: the MIP
    solver ("highs", "cbc", ...), overriding options.solver.

    What a verification of the same sample already settled is not searched again:
    `robust_radius`, an L-infinity radius proven robust for every class but `label` (with the
    same domain), is a lower bound in every norm but l0 (any norm here is >= L-infinity), and
    `counterexample`, an adversarial input found before, is an upper bound once re-checked."""
    start = time.perf_counter()
    net = load(net, np.shape(x))
    opts = _options(options, timeout, solver)
    check_norm(norm)
    if strategy not in STRATEGIES:
        raise InputError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if strategy in ("bisection", "hybrid") and norm != "linf":
        raise InputError(f"the {strategy} strategy decides L-infinity balls; use strategy='direct' for {norm}")
    shape = np.shape(x)
    flat = net.flatten_input(x)
    box = _input_set(flat, eps_max, opts.domain)
    if label is None:
        label = int(np.argmax(net.forward(flat)))
    goal = make_goal(net.output_size, check_label(net, label), targets)
    checker = Checker(net, goal, box, flat, norm)
    if norm == "l0" and not np.isfinite(checker.reach):
        raise InputError("l0 distortion needs a bounded input set: give a domain or eps_max")
    deadline = start + opts.timeout

    known = _known_lower(robust_radius if label not in goal.targets else None, norm, checker)
    outcome = None
    if goal.slack(net.forward(flat)) <= 0 and (here := checker.confirm(flat)) is not None:
        outcome = SearchOutcome(0.0, here, stats={"strategy": "clean"})
    elif known > 0 and known >= checker.reach:  # the proven ball holds the whole input set
        outcome = SearchOutcome(np.inf, None, infeasible=True, stats={"strategy": "verdict"})
    else:
        upper = attack_upper(checker, start + 0.2 * opts.timeout, seed=opts.seed)
        given = checker.confirm(net.flatten_input(counterexample)) if counterexample is not None else None
        if given is not None and (upper is None or given.distance < upper.distance):
            upper = given
        if strategy == "auto":
            strategy = "hybrid" if norm == "linf" else "direct"
        search = {"direct": _direct, "bisection": _bisection, "hybrid": _hybrid}[strategy]
        if upper is None and not np.isfinite(checker.reach):
            outcome = SearchOutcome(known, None, stats={"strategy": strategy, "note": "unbounded input set"})
        else:
            outcome = search(checker, upper, deadline, opts, rel_gap, abs_gap, known)
            outcome.lower = max(outcome.lower, known) if not outcome.infeasible else outcome.lower
        outcome.stats["attack_upper"] = upper.distance if upper is not None else None
        outcome.stats["known_lower"] = known
    # Examples are float32 inputs: the nearest ones to a float64 optimum sit up to an ulp away
    # per entry, which the gap allows for.
    ulp = measure(norm, np.spacing(np.abs(flat).astype(np.float32)).astype(np.float64)) if norm != "l0" else 0.0
    return _result(outcome, norm, goal, shape, time.perf_counter() - start, rel_gap, abs_gap + ulp)


def _known_lower(robust_radius: float | None, norm: str, checker: Checker) -> float:
    """The lower bound a proven-robust L-infinity radius gives (0 without one, or for l0)."""
    if robust_radius is None or norm == "l0":
        return 0.0
    radius = float(robust_radius)
    if not np.isfinite(radius) or radius < 0:
        raise InputError(f"robust_radius must be a finite number >= 0, got {robust_radius!r}")
    return radius


def _direct(checker, upper, deadline, options, rel_gap, abs_gap, lower=0.0) -> SearchOutcome:
    return direct_search(checker, upper, deadline, options, rel_gap, abs_gap, known_lower=lower)


def _bisection(checker, upper, deadline, options, rel_gap, abs_gap, lower=0.0) -> SearchOutcome:
    return bisection_search(checker, upper, deadline, options, rel_gap, abs_gap, lower=lower)


def _hybrid(checker, upper, deadline, options, rel_gap, abs_gap, lower=0.0) -> SearchOutcome:
    """linf: bisection for a share of the time (cheap radii far from the answer fall to bound
    propagation), then the MILP over the ball of the best example with the proven radius as
    its objective's lower bound."""
    now = time.perf_counter()
    # One short try per radius: a radius too close to call is left to the MILP that follows.
    first = bisection_search(checker, upper, now + _HYBRID_BISECTION * (deadline - now), options, rel_gap, abs_gap,
                             slices=(0.25,), lower=lower)
    if first.infeasible or gap_closed(first.best, first.lower, rel_gap, abs_gap) or time.perf_counter() >= deadline:
        first.stats["strategy"] = "hybrid"
        return first
    # Without an example (the attack found none and the whole input set was too close to call
    # in one try) the MILP gets the time left over the whole input set: giving up here said
    # `unknown` with most of the budget unspent.
    second = direct_search(checker, first.best, deadline, options, rel_gap, abs_gap, known_lower=first.lower)
    second.stats.update(strategy="hybrid", verifications=first.stats["verifications"], bisection_lower=first.lower)
    return second


def _result(outcome: SearchOutcome, norm, goal, shape, elapsed, rel_gap, abs_gap) -> DistortionResult:
    best = outcome.best
    upper = best.distance if best is not None else np.inf
    lower = min(outcome.lower, upper)
    if outcome.infeasible:
        status = "infeasible"
    elif best is None:
        status = "unknown"
    elif norm == "l0":
        status = "optimal" if lower >= upper else "unknown"
    else:
        status = "optimal" if upper - lower <= abs_gap + rel_gap * upper else "unknown"
    example = best.x.reshape(shape) if best is not None else None
    # the target class that wins at the example (onnxruntime's outputs)
    adversarial = int(max(goal.targets, key=lambda j: best.outputs[j])) if best is not None else None
    return DistortionResult(status, norm, goal.label, lower, upper, example, adversarial, goal.targets, elapsed,
                            outcome.stats.get("strategy", ""), outcome.stats)
