"""Adversarial examples for the distortion search: re-checked, pushed off the boundary, shrunk.

Every example reported goes through `Checker.confirm`: a float32 input inside the input set
that onnxruntime classifies into a target class (DESIGN rule 2). A MILP optimum sits exactly on
the decision boundary (a tie), where float32 rounding decides; `settle` then moves it outward
along the perturbation by the smallest factor that onnxruntime accepts, so the reported upper
bound is the distance of a point that really is adversarial.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from verifier.check import reference_logits
from verifier.distortion.goal import Goal
from verifier.distortion.norms import measure
from verifier.network.graph import Network
from verifier.search.attack import pgd_attack
from verifier.spec.ball import InputBox

_PUSH = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)  # relative outward pushes tried by `settle`


@dataclass
class Example:
    x: np.ndarray  # flat float32 values (held as float64) inside the input set
    distance: float  # measured from x0 in the search's norm
    outputs: np.ndarray  # onnxruntime's logits at x


@dataclass
class Checker:
    net: Network
    goal: Goal
    box: InputBox  # the input set: domain, intersected with the eps_max ball
    x0: np.ndarray
    norm: str

    @property
    def reach(self) -> float:
        """The largest L-infinity distance from x0 inside the input set (inf if unbounded)."""
        return float(np.max(np.maximum(self.x0 - self.box.lo, self.box.hi - self.x0))) if self.x0.size else 0.0

    def adversarial(self, x: np.ndarray) -> bool:
        """float64 forward pass of one flat input: does it reach the goal (a fast pre-check)."""
        return self.goal.slack(self.net.forward_all(x[None, :])[self.net.output_node][0]) <= 0

    def confirm(self, x: np.ndarray) -> Example | None:
        x32 = self.box.clip_float32(x)
        if not self.box.contains(x32):
            return None
        y = reference_logits(self.net, x32)
        if self.goal.slack(y) > 0:
            return None
        x64 = x32.astype(np.float64)
        if self.norm == "l0":  # entries changed from the float32 input the model would get
            return Example(x64, float(np.count_nonzero(x32 != self.x0.astype(np.float32))), y)
        return Example(x64, measure(self.norm, x64 - self.x0), y)

    def settle(self, x: np.ndarray, refine: int = 12) -> Example | None:
        """x itself if confirmed, else the least outward push of it that is (the first push
        of _PUSH that works, then bisected against the last one that did not)."""
        d = np.asarray(x, dtype=np.float64) - self.x0
        failed = None
        for push in _PUSH:
            if (ex := self.confirm(self.x0 + (1.0 + push) * d)) is not None:
                if failed is not None:
                    lo, hi = failed, push
                    for _ in range(refine):
                        mid = (lo + hi) / 2
                        if (trial := self.confirm(self.x0 + (1.0 + mid) * d)) is not None:
                            ex, hi = (trial if trial.distance < ex.distance else ex), mid
                        else:
                            lo = mid
                return ex
            failed = push
        return None

    def shrink(self, x: np.ndarray) -> np.ndarray:
        """Move an adversarial x toward x0 while it stays adversarial (float64 check): a line
        search on the scale of the perturbation, and for l1/l2/l0 also resetting its smallest
        entries to x0."""
        x = self._line(x)
        if self.norm != "linf":
            d = x - self.x0
            order = np.argsort(np.abs(d))
            lo, hi = 0, int(np.count_nonzero(d))  # entries reset: lo works, hi untested
            while hi - lo > 1:
                mid = (lo + hi) // 2
                trial = x.copy()
                trial[order[:mid]] = self.x0[order[:mid]]
                lo, hi = (mid, hi) if self.adversarial(trial) else (lo, mid)
            x = x.copy()
            x[order[:lo]] = self.x0[order[:lo]]
            x = self._line(x)
        return x

    def _line(self, x: np.ndarray, steps: int = 40) -> np.ndarray:
        d = x - self.x0
        lo, hi = 0.0, 1.0
        for _ in range(steps):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.adversarial(self.x0 + mid * d) else (mid, hi)
        return self.x0 + hi * d


def ball(box: InputBox, x0: np.ndarray, radius: float) -> InputBox:
    """The L-infinity ball of the radius around x0, inside the box."""
    return InputBox(np.maximum(box.lo, x0 - radius), np.minimum(box.hi, x0 + radius))


def attack_upper(checker: Checker, deadline: float, seed: int = 0, rounds: int = 8) -> Example | None:
    """An upper bound from attacks: PGD on L-infinity balls, bisecting their radius, then the
    best point shrunk in the search's norm and re-checked. None if PGD finds nothing."""
    net, box, x0, goal = checker.net, checker.box, checker.x0, checker.goal
    reach = checker.reach
    radius = reach if np.isfinite(reach) else 1.0
    found = None
    while found is None:
        res = pgd_attack(net, ball(box, x0, radius), x0, goal.disjuncts, restarts=3, steps=30, seed=seed,
                         deadline=deadline)
        if res.value <= 0:
            found = res.x
        elif np.isfinite(reach) or radius > 1e6 or time.perf_counter() > deadline:
            return None
        else:
            radius *= 4.0  # an unbounded domain: widen until something is found
    lo, hi = 0.0, float(np.abs(found - x0).max())
    for _ in range(rounds):
        if time.perf_counter() > deadline:
            break
        r = (lo + hi) / 2
        res = pgd_attack(net, ball(box, x0, r), x0, goal.disjuncts, restarts=2, steps=30, seed=seed,
                         deadline=deadline)
        if res.value <= 0:
            found, hi = res.x, float(np.abs(res.x - x0).max())
        else:
            lo = r
    return checker.settle(checker.shrink(found)) or checker.settle(found)
