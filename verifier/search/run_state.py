"""The state of one region search, shared by its stages: the proven lower bound of each
disjunct's slack, the best point seen, the deadline and the statistics; and `note`, the one hook
through which stages report progress (the `verifier.stages` logger: benchmarks attach a handler
to follow a run, nothing is patched).

Each disjunct d has a slack s_d (<= 0 means violated). `robust` only comes from lower bounds
above the tolerance; `adversarial` only from a point that onnxruntime confirms (`confirm`).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from verifier.bab.search import add_stats
from verifier.check import reference_logits
from verifier.network.graph import Network
from verifier.options import VerifyOptions
from verifier.result import Result, Status
from verifier.spec.property import Conjunction, InputRegion

#: Stage events (`RunState.note`): a record per finished stage with `stage`, `seconds`,
#: `worst_open` (the least open disjunct bound) and `open` (how many are open) as attributes.
stage_log = logging.getLogger("verifier.stages")


@dataclass
class RunState:
    net: Network
    region: InputRegion
    label: int | None
    options: VerifyOptions
    start: float
    lower: np.ndarray  # proven lower bound on min over the region of each disjunct's slack
    best_x: np.ndarray
    best_value: float = np.inf  # min over disjuncts of the slack at best_x
    stats: dict = field(default_factory=dict)
    plan: Any = None  # the search.plan.Plan, once resolved
    cap: float = math.inf  # a stage's own deadline (`capped`), where earlier than the run's

    @contextmanager
    def capped(self, deadline: float) -> Iterator[None]:
        """Within the block every stage keeps to `deadline` where it is earlier than the run's
        (a stage given a share of the time: what it proves stays proven after it)."""
        before = self.cap
        self.cap = min(before, deadline)
        try:
            yield
        finally:
            self.cap = before

    @property
    def disjuncts(self) -> list[Conjunction]:
        return self.region.disjuncts

    @property
    def deadline(self) -> float:
        return min(self.start + self.options.timeout, self.cap)

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def open(self) -> list[int]:
        """Disjuncts not yet proven impossible (all of them in exact mode)."""
        if self.options.exact:
            return list(range(len(self.disjuncts)))
        return [d for d in range(len(self.disjuncts)) if self.lower[d] <= self.options.tolerance]

    def worst_open(self) -> float:
        """The least recorded lower bound among the open disjuncts (inf once all are proven)."""
        return min((float(self.lower[d]) for d in self.open()), default=math.inf)

    def prove(self, d: int, bound: float) -> None:
        self.lower[d] = max(self.lower[d], bound)

    def prove_constrained(self, d: int, bound: float) -> None:
        """Record a bound on disjunct d computed with layer bounds valid only where d is still
        unproven (output constraints, bab/output_bounds.py): it proves the bound itself up to
        the tolerance; above it only that the slack exceeds the tolerance (that set is empty),
        recorded as the next float up (an over-claim of under one ulp of the tolerance, ~2e-21
        at 1e-5, far below any rounding in the network's own outputs). NaN proves nothing."""
        tolerance = self.options.tolerance
        if bound > tolerance:
            bound = float(np.nextafter(tolerance, np.inf))
        self.prove(d, bound if bound == bound else -math.inf)

    def record_search(self, disjuncts: list[int], out, capped: set, started: float) -> None:
        """What a branch and bound over `disjuncts` (begun at perf_counter() `started`) gives the
        run: its statistics, and each disjunct's bound, capped for the disjuncts searched with
        output-constrained bounds (`prove_constrained`); a search that found a counterexample
        proves nothing."""
        add_stats(self.stats, out.stats)  # over the stages
        self.stats["time_bab"] = round(self.stats.get("time_bab", 0) + time.perf_counter() - started, 4)
        if out.status == "counterexample":
            return
        for d, value in zip(disjuncts, out.lower):
            if d in capped:
                self.prove_constrained(d, value)
            else:
                self.prove(d, value)

    def slacks(self, y: np.ndarray) -> np.ndarray:
        return np.array([c.slack(y)[0] for c in self.disjuncts])

    def offer(self, x: np.ndarray) -> float:
        """Record a point of the region; returns its least slack (float64 forward)."""
        value = float(self.slacks(self.net.forward(x)).min())
        if value < self.best_value:
            self.best_value, self.best_x = value, x.copy()
        return value

    def confirm(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(float32 input inside the box, its onnxruntime outputs) if they violate the property."""
        box = self.region.box
        x32 = box.clip_float32(x)
        if not box.contains(x32):  # the box holds no float32 point here (e.g. eps = 0)
            return None
        y = reference_logits(self.net, x32)
        if self.slacks(y).min() <= 0:
            self.offer(x32.astype(np.float64))
            return x32, y
        return None

    def result(self, status: Status, decided_by: str, evidence=None) -> Result:
        ce, outputs = evidence if evidence is not None else (None, None)
        upper = self.best_value
        lower = min(float(self.lower.min()), upper)  # the minimum is at most any point's value
        adversarial_label = None
        if outputs is not None and self.label is not None:
            others = np.delete(np.arange(outputs.size), self.label)
            adversarial_label = int(others[np.argmax(outputs[others])])
        self.stats["disjuncts_open"] = len(self.open())
        return Result(status, self.label, int(self.stats.get("prediction", -1)), lower, upper, ce,
                      adversarial_label, time.perf_counter() - self.start, decided_by, self.stats,
                      counterexample_outputs=outputs)

    def note(self, stage: str, started: float, **info) -> None:
        """Report a finished stage (begun at perf_counter() `started`) to the stage log."""
        if stage_log.isEnabledFor(logging.INFO):
            seconds = time.perf_counter() - started
            extra = {"stage": stage, "seconds": seconds, "worst_open": self.worst_open(), "open": len(self.open()),
                     "elapsed": time.perf_counter() - self.start, **info}
            stage_log.info("%s took %.2f s: worst open %.4f (%d open)", stage, seconds, extra["worst_open"],
                           extra["open"], extra=extra)
