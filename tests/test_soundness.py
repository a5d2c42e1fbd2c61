"""Verdicts hold up: robust means nothing is found by sampling or PGD, adversarial means the
counterexample is in the set and onnxruntime misclassifies it, and a run cut short is never
robust without a proof."""

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import verifier
from solvers.base import SolveOptions
from solvers.highs import HighsSolver
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import enumerate_min_margin
from verifier import Status, VerifyOptions
from verifier.bounds.interval import interval_bounds
from verifier.bounds.lp import safe_lower_bound
from verifier.encode.network import encode_network
from verifier.search.attack import pgd_attack
from verifier.spec.ball import linf_ball
from verifier.spec.property import Property


def _ort_margin(model: bytes, x: np.ndarray, label: int) -> float:
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    logits = s.run(None, {"x": x.reshape(1, -1).astype(np.float32)})[0].ravel()
    return float(logits[label] - np.delete(logits, label).max())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), eps=st.floats(0.01, 0.5), width=st.integers(4, 12))
def test_verdicts_carry_evidence(seed, eps, width):
    rng = np.random.default_rng(seed)
    ws, bs = random_mlp(rng, [6, width, width, 4])
    model = mlp_onnx(ws, bs)
    net = verifier.load(model)
    x = rng.uniform(0, 1, 6)
    r = verifier.verify(net, x, eps, timeout=30)
    box = linf_ball(x, eps)
    if r.status == Status.ADVERSARIAL:
        ce = r.counterexample.astype(np.float64)
        assert box.contains(ce)
        assert _ort_margin(model, r.counterexample, r.label) <= 0
        assert r.margin_upper <= 0
    elif r.status == Status.ROBUST:
        assert r.margin_lower > 0
        samples = rng.uniform(box.lo, box.hi, (4000, 6))
        logits = net.forward(samples)
        assert (logits[:, r.label] - np.delete(logits, r.label, axis=1).max(axis=1)).min() > 0
        disjuncts = Property.robustness(box, r.label, 4).regions[0].disjuncts
        attack = pgd_attack(net, box, x, disjuncts, restarts=10, steps=60, seed=seed + 1)
        assert attack.value > 0
    assert r.margin_lower <= r.margin_upper


def test_cut_short_runs_are_never_wrongly_robust():
    """With almost no time the MIP cannot finish: the verdict is unknown unless bounds or an
    attack settled it — and then it agrees with the exact answer."""
    outcomes = set()
    for seed in range(15):
        rng = np.random.default_rng(seed)
        ws, bs = random_mlp(rng, [4, 4, 4, 3])
        net = verifier.load(mlp_onnx(ws, bs))
        x = rng.uniform(0.3, 0.7, 4)
        eps = 0.3
        label = int(np.argmax(net.forward(x)))
        exact = enumerate_min_margin(ws, bs, np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1), label)
        r = verifier.verify(net, x, eps, label=label, timeout=1e-4,
                            options=VerifyOptions(attack_steps=0, lp_tightening=False))
        outcomes.add(r.status)
        if r.status == Status.ROBUST:
            assert r.decided_by in ("bounds", "bab") and exact > 0  # bab: its root bound
        if r.status == Status.ADVERSARIAL:
            assert exact <= 1e-6
        assert r.margin_lower <= exact + 1e-9
    assert Status.UNKNOWN in outcomes


@pytest.mark.parametrize("seed", range(5))
def test_lp_bound_is_safe_and_tight(seed):
    rng = np.random.default_rng(seed)
    ws, bs = random_mlp(rng, [5, 10, 10, 3])
    net = verifier.load(mlp_onnx(ws, bs))
    x = rng.uniform(0, 1, 5)
    bounds = interval_bounds(net, np.clip(x - 0.3, 0, 1), np.clip(x + 0.3, 0, 1))
    enc = encode_network(net, bounds)
    solver = HighsSolver(enc.problem, relax=True)
    c, _ = enc.linear_objective(net.output_node, np.array([1.0, -1.0, 0.0]))
    solver.set_objective(c)
    res = solver.solve(SolveOptions())
    safe = safe_lower_bound(enc.problem, c, res.row_dual)
    assert safe <= res.objective + 1e-12
    assert safe == pytest.approx(res.objective, abs=1e-6)
    # Any dual vector gives a valid bound: a perturbed one must still lie below the optimum.
    assert safe_lower_bound(enc.problem, c, res.row_dual + rng.normal(size=res.row_dual.size)) <= res.objective
