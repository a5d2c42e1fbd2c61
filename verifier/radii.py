"""One sample at several L-infinity radii in one call, each answer reused for the others.

Why: the certified-accuracy curve (adversarial accuracy against eps) needs a verdict at each of
several radii, and verdicts are monotone in the radius. The ball of radius r' <= r (both cut to
the same domain) lies inside the ball of radius r, so

- `robust` at r answers every r' <= r as robust (the smaller ball has no point the larger lacks);
- a counterexample at L-infinity distance d from x answers every r' whose ball holds it (all
  r' >= d) as adversarial; membership is checked against that ball's own box, so float rounding
  cannot stretch the claim, and the point was already confirmed by onnxruntime in `verify`;
- `unknown` implies nothing (a later answer may still imply one for that radius).

Order: the largest radius first (an attack is cheapest where the ball is widest, and its example
usually answers the largest radii at once); then the smallest radius at or above where the
verdict probably flips, guessed from the largest radius's lower margin bound (`_Run._guess`; a
full verification proves more than that bound, so the verdict often holds a little beyond the
guess, and robust there answers every radius below it at once: on a network robust up to its
training radius, one call for all of them); then the smallest (often proven by bounds); then
bisection over the radii still open (the upper middle of the longest run of open radii: robust
there answers the run's lower half). A sample thus needs at most 4 + log2(k) calls for k radii
in pass 1, and often 2.

Time: `timeout` covers the whole call, as for `verify`. Pass 1 visits the radii in that order,
each with min(time left / radii left to visit, timeout / (4 k)): enough for bounds and the
attack, which decide most radii; a radius that is the only one left open gets all the time left.
Pass 2 gives the radii still unknown the time that is left (largest, smallest, then bisection),
each an equal share of what is left at its turn (so what one call leaves unused passes to the
next); a radius retried there keeps the tighter bounds of its two attempts. Every budget is read
off the wall clock, so only the last call's own overrun (`verify`'s promise: its timeout plus
max(5%, 2 s), normally milliseconds) can pass the timeout; a radius left less than MIN_SHARE
seconds is not run (unknown, decided_by "timeout"). The margin bounds are then shared across
radii (a lower bound at r holds for every smaller radius, a point's margin for every larger
one), each kept the tightest.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np

from verifier.api import _options, check_label, load, verify
from verifier.errors import InputError
from verifier.network.graph import Network
from verifier.numbers import number_list
from verifier.options import VerifyOptions
from verifier.result import Result, Status
from verifier.spec.ball import linf_ball

#: Seconds below which a radius is not run at all (left unknown, "timeout").
MIN_SHARE = 1e-3
#: Pass 1 gives each radius at most timeout / (QUICK * k).
QUICK = 4


def eps_list(value, name: str = "eps") -> list[float]:
    """The radii of `value` (a number, a list of numbers, or text such as "0.01,0.02"), sorted
    ascending with duplicates removed; each must be a finite number >= 0, else an InputError that
    names `name` and the value."""
    radii = set()
    for r in number_list(value, name):
        if r < 0:
            raise InputError(f"{name} must be a finite number >= 0, got {r}")
        radii.add(r + 0.0)  # -0.0 -> 0.0
    return sorted(radii)


@dataclass
class RadiiResult:
    """The verdicts of one sample at each radius (ascending): `results[i]` answers `eps[i]`.
    A radius answered by another's verdict has decided_by "implied by eps=R", time 0 (plus any
    attempt of its own that ended unknown) and stats["implied_by"] = R."""

    eps: list[float]
    results: list[Result]
    label: int
    prediction: int
    time: float  # seconds of the whole call

    def __iter__(self) -> Iterator[tuple[float, Result]]:
        return iter(zip(self.eps, self.results))

    def __len__(self) -> int:
        return len(self.eps)

    def at(self, eps: float) -> Result:
        """The result at radius `eps` (one of self.eps)."""
        return self.results[self.eps.index(float(eps))]

    def example(self) -> tuple[float, Result] | None:
        """(radius, result) of the smallest radius found adversarial: its counterexample lies in
        the ball of every radius found adversarial, so it is the one example for all of them."""
        return next(((e, r) for e, r in self if r.status == Status.ADVERSARIAL), None)

    def to_dict(self, with_counterexample: bool = False) -> dict:
        return {"label": self.label, "prediction": self.prediction, "time": round(self.time, 4),
                "radii": [{"eps": e, **r.to_dict(with_counterexample)} for e, r in self]}


def verify_radii(net: Network | str | os.PathLike, x: np.ndarray, eps, label: int | None = None,
                 timeout: float | None = None, options: VerifyOptions | None = None,
                 solver: str | None = None) -> RadiiResult:
    """Is the decision on x the same for every input within L-infinity distance r (inside the
    input domain), for each radius r of `eps` (a list, or text such as "0.01,0.02")? As `verify`
    at each radius alone, in an order that lets answers imply others (module docstring); the
    timeout (seconds, or options.timeout) covers all radii together. label None: the network's
    prediction on x."""
    began = time.perf_counter()
    net = load(net, np.shape(x))
    radii = eps_list(eps)
    opts = _options(options, timeout, solver)
    flat = net.flatten_input(x)
    boxes = [linf_ball(flat, r, opts.domain) for r in radii]  # also refuses an x outside the domain
    prediction = int(np.argmax(net.forward(flat)))
    label = prediction if label is None else check_label(net, label)
    run = _Run(net, x, flat, radii, boxes, label, prediction, opts, began)
    run.decide()
    results = _shared_bounds(run.final, net, flat, label)
    return RadiiResult(radii, results, label, prediction, time.perf_counter() - began)


class _Run:
    """The radii of one call: what is known at each, and which to try next with how much time."""

    def __init__(self, net: Network, x: np.ndarray, flat: np.ndarray, radii: list[float], boxes: list,
                 label: int, prediction: int, opts: VerifyOptions, began: float) -> None:
        self.net, self.x, self.flat, self.radii, self.boxes = net, x, flat, radii, boxes
        self.label, self.prediction, self.opts, self.began = label, prediction, opts, began
        self.final: list[Result | None] = [None] * len(radii)
        self.spent = [0.0] * len(radii)  # seconds of this radius's own calls
        self.clean = _margin(net, flat, label)  # the sample's own margin: every ball holds it

    def left(self) -> float:
        return self.opts.timeout - (time.perf_counter() - self.began)

    def decide(self) -> None:
        k = len(self.radii)
        tried: set[int] = set()
        while (i := _pick([j for j in range(k) if self.final[j] is None and j not in tried], self.radii,
                          self._guess() if len(tried) == 1 else None)) is not None:
            tried.add(i)
            untried = sum(self.final[j] is None and j not in tried for j in range(k)) + 1
            pending = sum(self._unknown(j) for j in range(k))
            share = self.left() / untried
            if untried > 1 or pending:  # leave time for pass 2
                share = min(share, self.opts.timeout / (QUICK * k))
            self._run(i, share)
        retried: set[int] = set()
        while (i := _pick([j for j in range(k) if self._unknown(j) and j not in retried], self.radii)) is not None:
            retried.add(i)
            self._run(i, self.left() / sum(self._unknown(j) and j not in retried or j == i for j in range(k)))

    def _guess(self) -> float | None:
        """Where the verdict probably flips, from the largest radius's answer: the zero of the line
        through (0, clean margin) and (largest radius, its lower margin bound). Bound propagation's
        lower bound falls faster than linearly as the radius grows (more neurons turn unstable),
        and a full verification proves more than that bound, so the flip is usually at or above
        this guess. Only an order: nothing is concluded from it."""
        r, m = self.final[-1], self.clean
        if r is None or not m > 0 or not math.isfinite(r.margin_lower) or r.margin_lower >= m:
            return None
        return self.radii[-1] * m / (m - r.margin_lower)

    def _unknown(self, j: int) -> bool:
        return self.final[j] is not None and self.final[j].status == Status.UNKNOWN

    def _run(self, i: int, budget: float) -> None:
        if budget < MIN_SHARE:
            if self.final[i] is None:
                self.final[i] = Result(Status.UNKNOWN, self.label, self.prediction, -math.inf, math.inf, None, None,
                                       0.0, "timeout", {"skipped": "no time left"})
            return
        r = verify(self.net, self.x, self.radii[i], label=self.label, options=replace(self.opts, timeout=budget))
        self.spent[i] += r.time
        previous = self.final[i]
        if r.status == Status.UNKNOWN and previous is not None and previous.status == Status.UNKNOWN:
            r.margin_lower = max(r.margin_lower, previous.margin_lower)
            r.margin_upper = min(r.margin_upper, previous.margin_upper)
        r.time = self.spent[i]
        self.final[i] = r
        if r.status == Status.ROBUST:
            for j in range(i):
                self._imply(j, i, r)
        elif r.status == Status.ADVERSARIAL:
            ce = np.asarray(r.counterexample, dtype=np.float64).ravel()
            r.stats["counterexample_distance"] = float(np.max(np.abs(ce - self.flat))) if ce.size else 0.0
            for j in range(len(self.radii)):
                if j != i and self.boxes[j].contains(ce):
                    self._imply(j, i, r)

    def _imply(self, j: int, source: int, r: Result) -> None:
        """Radius j answered by the verdict `r` at radius `source` (if j is not decided yet)."""
        old = self.final[j]
        if old is not None and old.status != Status.UNKNOWN:
            return
        robust = r.status == Status.ROBUST
        lower, upper = (r.margin_lower, math.inf) if robust else (-math.inf, r.margin_upper)
        if not robust:  # the example's own margin: it lies in this ball, r's best point may not
            upper = _margin(self.net, np.asarray(r.counterexample, dtype=np.float64).ravel(), self.label)
        if old is not None:
            lower, upper = max(lower, old.margin_lower), min(upper, old.margin_upper)
        stats = {"implied_by": self.radii[source]}
        if not robust:
            stats["counterexample_distance"] = r.stats.get("counterexample_distance")
        self.final[j] = Result(r.status, self.label, r.prediction, lower, upper, r.counterexample,
                               r.adversarial_label, self.spent[j], f"implied by eps={self.radii[source]:g}", stats,
                               r.counterexample_outputs)


def _pick(open_: Sequence[int], radii: Sequence[float], guess: float | None = None) -> int | None:
    """The next radius (index) of the open ones: the largest radius; then, given a `guess` of
    where the verdict flips, the smallest radius at or above it (the largest if none is); the
    smallest; then the upper middle of the longest run of consecutive open indices (the highest
    run on a tie)."""
    if not open_:
        return None
    if len(radii) - 1 in open_:
        return len(radii) - 1
    if guess is not None:
        above = [j for j in open_ if radii[j] >= guess]
        return min(above) if above else max(open_)
    if 0 in open_:
        return 0
    runs: list[list[int]] = []
    for j in sorted(open_):
        if runs and runs[-1][-1] == j - 1:
            runs[-1].append(j)
        else:
            runs.append([j])
    best = max(runs, key=lambda run: (len(run), run[0]))
    return best[len(best) // 2]


def _margin(net: Network, point: np.ndarray, label: int) -> float:
    y = net.forward(point)
    return float(y[label] - np.max(np.delete(y, label)))


def _shared_bounds(final: list[Result], net: Network, flat: np.ndarray, label: int) -> list[Result]:
    """Each radius's margin bounds tightened by the others': a lower bound at r holds for every
    radius below r, the value at a point of the ball of r for every radius above r, and the clean
    sample's margin for all."""
    clean = _margin(net, flat, label)
    lows = [r.margin_lower for r in final]
    highs = [r.margin_upper for r in final]
    for i, r in enumerate(final):
        lower = max(lows[i:])
        upper = min(min(highs[:i + 1]), clean)
        r.margin_lower, r.margin_upper = min(lower, upper), upper
    return final
