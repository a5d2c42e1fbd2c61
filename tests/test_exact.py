"""The MILP against independent oracles: enumeration of activation patterns on tiny networks,
and the closed form for linear classifiers."""

import numpy as np
import pytest

import verifier
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import enumerate_min_margin, linear_worst_margin
from verifier import Status, VerifyOptions


@pytest.mark.parametrize("mode", ["split", "joint"])
@pytest.mark.parametrize("seed", range(12))
def test_exact_margin_matches_enumeration(seed, mode):
    rng = np.random.default_rng(seed)
    sizes = [3, 4, 4, 3] if seed % 2 else [4, 6, 3]
    ws, bs = random_mlp(rng, sizes)
    net = verifier.load(mlp_onnx(ws, bs))
    x = rng.uniform(0.2, 0.8, sizes[0])
    eps = float(rng.uniform(0.05, 0.4))
    label = int(rng.integers(sizes[-1]))
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    expected = enumerate_min_margin(ws, bs, lo, hi, label)
    r = verifier.verify(net, x, eps, label=label, options=VerifyOptions(exact=True, disjunctions=mode), timeout=60)
    assert r.margin_lower == pytest.approx(expected, abs=1e-6)
    assert r.margin_upper == pytest.approx(expected, abs=1e-6)
    # The early-stopping search agrees on the verdict whenever the answer is not a near tie.
    quick = verifier.verify(net, x, eps, label=label, timeout=60, options=VerifyOptions(disjunctions=mode))
    if expected > 1e-4:
        assert quick.status == Status.ROBUST
    elif expected < -1e-4:
        assert quick.status == Status.ADVERSARIAL
    assert quick.margin_lower <= expected + 1e-9 <= quick.margin_upper + 2e-9


@pytest.mark.parametrize("seed", range(6))
def test_linear_classifier_closed_form(seed):
    rng = np.random.default_rng(100 + seed)
    w = np.float32(rng.normal(size=(5, 8))).astype(np.float64)
    b = np.float32(rng.normal(size=5)).astype(np.float64)
    net = verifier.load(mlp_onnx([w], [b]))
    x = rng.uniform(-1, 1, 8)
    label = int(np.argmax(w @ x + b))
    eps = float(rng.uniform(0.01, 0.3))
    r = verifier.verify(net, x, eps, label=label,
                        options=VerifyOptions(exact=True, domain=None), timeout=30)
    expected = linear_worst_margin(w, b, x, eps, label)
    assert r.margin_lower == pytest.approx(expected, abs=1e-6)
    assert r.margin_upper == pytest.approx(expected, abs=1e-6)
    assert r.status == (Status.ROBUST if expected > 0 else Status.ADVERSARIAL)


@pytest.mark.parametrize("seed", range(6))
def test_relaxed_last_layer_binaries_keep_the_exact_margin(seed):
    """One hidden layer, wide input box: many binaries are relaxed per label, and the exact
    margin still equals enumeration, with and without the relaxation."""
    rng = np.random.default_rng(300 + seed)
    ws, bs = random_mlp(rng, [3, 9, 4])
    net = verifier.load(mlp_onnx(ws, bs))
    x = rng.uniform(0.3, 0.7, 3)
    eps, label = 0.3, int(rng.integers(4))
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    bounds = verifier.bounds.interval.interval_bounds(net, lo, hi)
    enc = verifier.encode.network.encode_network(net, bounds)
    relaxed = 0
    for j in range(4):
        if j != label:
            c, _ = enc.linear_objective(net.output_node, np.eye(4)[label] - np.eye(4)[j])
            relaxed += int(enc.convex_binaries(net, c).sum())
    assert relaxed > 0
    expected = enumerate_min_margin(ws, bs, lo, hi, label)
    for convex in (True, False):
        r = verifier.verify(net, x, eps, label=label, timeout=60,
                            options=VerifyOptions(exact=True, disjunctions="split", convex_relus=convex))
        assert r.margin_lower == pytest.approx(expected, abs=1e-6)
        assert r.margin_upper == pytest.approx(expected, abs=1e-6)


def test_options_timeout_is_used_when_no_timeout_is_given():
    from verifier.api import _options
    assert _options(VerifyOptions(timeout=7.0), None).timeout == 7.0
    assert _options(VerifyOptions(timeout=7.0), 3).timeout == 3.0
    assert _options(None, None).timeout == VerifyOptions().timeout


def test_exact_mip_points_satisfy_every_row(monkeypatch):
    """The cause behind exact margins 2e-6 below enumeration with highspy 1.16: at HiGHS's
    default feasibility tolerance (1e-6) the MIP of `tests/test_ops.py`'s pad network returns
    a point that violates a row by 9e-7, and an "optimal" value (and dual bound) 2e-6 below
    the true optimum. In exact mode every finished MIP's point must satisfy every row to the
    exact tolerance, so the optimum it reports is the true one to ~1e-9."""
    from solvers.base import EXACT_FEASIBILITY
    from solvers.highs import HighsSolver
    from tests.pwl_oracle import min_margin
    from tests.test_ops import NETS, export

    seen = []
    solve = HighsSolver.solve

    def recording(self, options):
        res = solve(self, options)
        if self.is_mip and res.x is not None:
            seen.append((self.problem, res, options.feasibility_tol))
        return res

    monkeypatch.setattr(HighsSolver, "solve", recording)
    f, shape = NETS["pad_constant"](11)
    rng = np.random.default_rng(1)  # the instance of test_ops' [1-pad_constant] case
    x = rng.uniform(0.2, 0.8, shape)
    eps = float(rng.uniform(0.1, 0.3))
    label = int(rng.integers(3))
    lo, hi = np.clip(x.ravel() - eps, 0, 1), np.clip(x.ravel() + eps, 0, 1)
    r = verifier.verify(verifier.load(export(f, shape)), x, eps, label=label,
                        options=VerifyOptions(exact=True), timeout=60)
    assert seen
    for problem, res, tol in seen:
        assert tol == EXACT_FEASIBILITY
        ax = problem.A @ res.x
        violation = max(np.max(problem.row_lo - ax), np.max(ax - problem.row_hi))
        assert violation <= 10 * EXACT_FEASIBILITY
    assert r.margin_lower == pytest.approx(min_margin(f, shape, lo, hi, label, 3), abs=1e-8)
