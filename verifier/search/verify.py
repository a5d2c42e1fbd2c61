"""Verification of one sample over an input box: the stages from cheap to exact.

clean check -> interval + symbolic bounds -> PGD attack -> LP margins (after LP tightening) ->
one MIP per label still open. A stage that settles every label ends the run. `robust` only
comes from a proven lower bound above the tolerance; `adversarial` only from a point that
onnxruntime confirms; everything else is `unknown` with the bounds reached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from solvers.base import SolveOptions, SolveStatus
from solvers.highs import HighsSolver
from verifier.bounds.interval import interval_bounds, margin_interval
from verifier.bounds.lp import lp_min, tighten_with_lp
from verifier.bounds.symbolic import margin_lower_symbolic, symbolic_bounds
from verifier.check import margin, reference_logits
from verifier.encode.network import encode_network
from verifier.network.graph import Network
from verifier.options import VerifyOptions
from verifier.result import Result, Status
from verifier.search.attack import margins_of, pgd_attack
from verifier.spec.ball import InputBox


@dataclass
class _Run:
    """State of one verification: proven lower bound and best point per label."""

    net: Network
    box: InputBox
    label: int
    options: VerifyOptions
    start: float
    lower: np.ndarray  # proven lower bound on logit[label] - logit[j]
    best_x: np.ndarray
    best_margin: float
    stats: dict = field(default_factory=dict)

    @property
    def deadline(self) -> float:
        return self.start + self.options.timeout

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def open_labels(self) -> list[int]:
        """Labels not yet proven below the true one (all of them in exact mode)."""
        others = [j for j in range(self.lower.size) if j != self.label]
        if self.options.exact:
            return others
        return [j for j in others if self.lower[j] <= self.options.tolerance]

    def prove(self, j: int, bound: float) -> None:
        self.lower[j] = max(self.lower[j], bound)

    def offer(self, x: np.ndarray) -> float:
        """Record a point of the set; returns its margin (float64 forward)."""
        m = float(margins_of(self.net.forward(x[None, :]), self.label)[0])
        if m < self.best_margin:
            self.best_margin, self.best_x = m, x.copy()
        return m

    def confirm(self, x: np.ndarray) -> tuple[np.ndarray, int] | None:
        """The float32 point inside the box, if onnxruntime misclassifies it."""
        x32 = self.box.clip_float32(x)
        if not self.box.contains(x32):  # the set holds no float32 point here (e.g. eps = 0)
            return None
        logits = reference_logits(self.net, x32)
        if margin(logits, self.label) <= 0:
            self.offer(x32.astype(np.float64))
            others = np.delete(np.arange(logits.size), self.label)
            return x32, int(others[np.argmax(logits[others])])
        return None

    def result(self, status: Status, decided_by: str, evidence=None) -> Result:
        ce, adv_label = evidence if evidence is not None else (None, None)
        lower = float(np.min(np.delete(self.lower, self.label)))
        upper = self.best_margin
        lower = min(lower, upper)  # the minimum is at most the margin of any point of the set
        self.stats["labels_open"] = len(self.open_labels())
        return Result(status, self.label, int(self.stats.get("prediction", self.label)), lower, upper,
                      ce, adv_label, time.perf_counter() - self.start, decided_by, self.stats)


def _relu_stats(net: Network, bounds: dict, prefix: str) -> dict:
    total = unstable = 0
    for relu in net.relu_nodes():
        lo, hi = bounds[net.op(relu).inputs[0]]
        total += lo.size
        unstable += int(((lo < 0) & (hi > 0)).sum())
    return {"relus": total, f"unstable_{prefix}": unstable}


def verify_box(net: Network, x: np.ndarray, box: InputBox, label: int, options: VerifyOptions) -> Result:
    """Decide whether every input in `box` keeps `label` on top (x is a point of the box)."""
    start = time.perf_counter()
    run = _Run(net, box, label, options, start, np.full(net.output_size, -np.inf), x.copy(), np.inf)
    run.lower[label] = np.inf
    clean = run.offer(x)
    run.stats["prediction"] = int(np.argmax(net.forward(x)))
    if clean <= 0 and not options.exact and (evidence := run.confirm(x)) is not None:
        return run.result(Status.ADVERSARIAL, "clean", evidence)

    bounds = interval_bounds(net, box.lo, box.hi)
    run.stats.update(_relu_stats(net, bounds, "interval"))
    run.lower = np.maximum(run.lower, margin_interval(net, bounds, label))
    if options.symbolic:
        bounds = symbolic_bounds(net, bounds)
        run.lower = np.maximum(run.lower, margin_lower_symbolic(net, bounds, label))
        run.stats.update(_relu_stats(net, bounds, "symbolic"))
    run.stats["time_bounds"] = round(time.perf_counter() - start, 4)
    if not run.open_labels():
        return run.result(Status.ROBUST, "bounds")

    attack = pgd_attack(net, box, x, label, run.open_labels(), options.attack_restarts,
                        options.attack_steps, options.seed, run.deadline)
    run.offer(attack.x)
    if attack.margin <= 0 and not options.exact and (evidence := run.confirm(attack.x)) is not None:
        return run.result(Status.ADVERSARIAL, "attack", evidence)
    order = sorted(run.open_labels(), key=lambda j: attack.target_margins[j])

    # LP relaxation of the margins; tighten intermediate bounds with LPs if that is not enough.
    enc = encode_network(net, bounds)
    _lp_margins(run, enc, order)
    if run.open_labels() and options.lp_tightening and run.remaining() > 0:
        t = time.perf_counter()
        budget = t + options.lp_budget * run.remaining()
        bounds = tighten_with_lp(net, bounds, budget, run.stats)
        run.stats.update(_relu_stats(net, bounds, "lp"))
        run.stats["time_lp_tightening"] = round(time.perf_counter() - t, 4)
        enc = encode_network(net, bounds)
        _lp_margins(run, enc, run.open_labels())
    if not run.open_labels() and not options.exact:
        return run.result(Status.ROBUST, "lp")

    return _mip_search(run, enc, [j for j in order if j in run.open_labels()], attack.x)


def _lp_margins(run: _Run, enc, labels: list[int]) -> None:
    solver = HighsSolver(enc.problem, relax=True, primal_simplex=True)
    for j in labels:
        if run.remaining() <= 0:
            return
        w = np.zeros(run.net.output_size)
        w[run.label], w[j] = 1.0, -1.0
        c, offset = enc.linear_objective(run.net.output_node, w)
        run.prove(j, lp_min(solver, enc.problem, c, run.remaining()) + offset)


def _mip_search(run: _Run, enc, labels: list[int], seed_x: np.ndarray) -> Result:
    """One MIP per open label, hardest-looking first; stop at the first confirmed violation."""
    opts = run.options
    tol = opts.tolerance
    solver = HighsSolver(enc.problem, threads=opts.threads)
    run.stats["binaries"] = enc.num_binaries
    run.stats["mip_nodes"] = 0
    seed = enc.assignment(run.net, seed_x)
    unresolved = list(labels)
    for attempt in range(2):  # a fair slice per label first, then all the time left
        for j in list(unresolved):
            left = run.remaining()
            if left <= 0:
                break
            share = left / len(unresolved) if attempt == 0 else left
            w = np.zeros(run.net.output_size)
            w[run.label], w[j] = 1.0, -1.0
            c, offset = enc.linear_objective(run.net.output_node, w)
            solver.set_objective(c)
            solve = SolveOptions(time_limit=share, initial=seed)
            if not opts.exact:
                solve.cutoff, solve.target = 2 * tol - offset, -offset
            res = solver.solve(solve)
            run.stats["mip_nodes"] += res.nodes
            finished = res.status in (SolveStatus.OPTIMAL, SolveStatus.INFEASIBLE)
            if finished:  # only a finished solve's dual bound counts as a proof (rule 1)
                run.prove(j, res.dual_bound + offset)
            if res.x is not None:
                x_in = res.x[enc.input_cols]
                m = run.offer(np.clip(x_in, run.box.lo, run.box.hi))
                if m <= 0 and not opts.exact:
                    evidence = run.confirm(x_in) or _polish(run, x_in, j)
                    if evidence is not None:
                        return run.result(Status.ADVERSARIAL, "mip", evidence)
            if finished and (run.lower[j] > tol or opts.exact):
                unresolved.remove(j)
        if not unresolved:
            break
    if opts.exact and run.best_margin <= 0 and (evidence := run.confirm(run.best_x)) is not None:
        return run.result(Status.ADVERSARIAL, "mip", evidence)
    if all(run.lower[j] > tol for j in range(run.lower.size) if j != run.label):
        return run.result(Status.ROBUST, "mip")
    return run.result(Status.UNKNOWN, "timeout" if run.remaining() <= 0 else "numerics")


def _polish(run: _Run, x: np.ndarray, target: int):
    """A MIP point at margin ~0 may not survive float32: push it further with a short PGD."""
    attack = pgd_attack(run.net, run.box, np.clip(x, run.box.lo, run.box.hi), run.label, [target],
                        restarts=1, steps=20, seed=run.options.seed, deadline=run.deadline)
    return run.confirm(attack.x) if attack.margin <= 0 else None
