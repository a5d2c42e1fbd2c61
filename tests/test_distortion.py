"""Minimum adversarial distortion against independent oracles: closed forms for linear
classifiers, enumeration of activation patterns (one LP or QP per pattern) on tiny networks."""

from pathlib import Path

import numpy as np
import pytest

import verifier
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import enumerate_min_distortion
from verifier import InputError, VerifyOptions
from verifier.check import reference_logits
from verifier.distortion.goal import make_goal
from verifier.distortion.norms import measure

DATA = Path(__file__).parent / "data"
DUAL = {"linf": 1, "l1": np.inf, "l2": 2}  # the dual norm of w in the closed form


def _conjunctions(num_outputs, label, targets=None):
    return [(c.C, c.d) for c in make_goal(num_outputs, label, targets).disjuncts]


def _assert_example(net, r, x, targets):
    """The example is a float32 input at distance `upper` that onnxruntime sends to a target."""
    assert r.example is not None and r.example.shape == np.shape(x)
    y = reference_logits(net, r.example.ravel().astype(np.float32))
    others = [k for k in range(y.size) if k not in targets]
    assert max(y[j] for j in targets) >= max(y[k] for k in others)
    if r.norm == "l0":  # entries changed from the float32 input
        assert np.count_nonzero(r.example.ravel().astype(np.float32) != np.ravel(x).astype(np.float32)) == r.upper
    else:
        assert measure(r.norm, r.example.ravel() - np.ravel(x)) == pytest.approx(r.upper, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l1", "l2"])
@pytest.mark.parametrize("seed", range(3))
def test_linear_classifier_closed_form(norm, seed):
    rng = np.random.default_rng(300 + seed)
    w = np.float32(rng.normal(size=(4, 6))).astype(np.float64)
    b = np.float32(rng.normal(size=4)).astype(np.float64)
    net = verifier.load(mlp_onnx([w], [b]))
    x = rng.uniform(-1, 1, 6)
    label = int(np.argmax(w @ x + b))
    expected = min(((w[label] - w[j]) @ x + b[label] - b[j]) / np.linalg.norm(w[label] - w[j], DUAL[norm])
                   for j in range(4) if j != label)
    r = verifier.min_distortion(net, x, norm=norm, label=label, rel_gap=1e-7, timeout=30,
                                options=VerifyOptions(domain=None))
    assert r.status == "optimal"
    assert r.lower == pytest.approx(expected, rel=1e-6)
    assert r.upper == pytest.approx(expected, rel=1e-6)
    _assert_example(net, r, x, r.targets)


def _tiny(seed):
    rng = np.random.default_rng(seed)
    sizes = [3, 4, 3, 3] if seed % 2 else [3, 5, 3]
    ws, bs = random_mlp(rng, sizes)
    x = rng.uniform(0.2, 0.8, sizes[0])
    label = int(np.argmax(verifier.load(mlp_onnx(ws, bs)).forward(x)))
    return ws, bs, x, label


@pytest.mark.parametrize("norm", ["linf", "l1", "l2", "l0"])
@pytest.mark.parametrize("seed", [2, 4, 8, 9, 10, 0])  # seed 0: no other class is reachable
def test_tiny_networks_match_enumeration(norm, seed):
    ws, bs, x, label = _tiny(seed)
    net = verifier.load(mlp_onnx(ws, bs))
    eps_max = 0.6
    lo, hi = np.clip(x - eps_max, 0, 1), np.clip(x + eps_max, 0, 1)
    expected = enumerate_min_distortion(ws, bs, x, lo, hi, _conjunctions(3, label), norm)
    r = verifier.min_distortion(net, x, norm=norm, label=label, eps_max=eps_max, timeout=60)
    if not np.isfinite(expected):
        assert r.status == "infeasible" and r.example is None
        return
    assert r.status == "optimal"
    assert r.lower == pytest.approx(expected, rel=2e-5, abs=1e-6)
    assert r.upper == pytest.approx(expected, rel=2e-5, abs=1e-6)
    _assert_example(net, r, x, r.targets)


@pytest.mark.parametrize("targets", [[0], [2], [0, 2]])
@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_targeted_sets(targets, norm):
    ws, bs, x, label = _tiny(9)  # label 1; classes 0 and 2 both reachable
    targets = [t for t in targets if t != label]
    net = verifier.load(mlp_onnx(ws, bs))
    expected = enumerate_min_distortion(ws, bs, x, np.zeros(3), np.ones(3), _conjunctions(3, label, targets), norm)
    r = verifier.min_distortion(net, x, norm=norm, label=label, targets=targets, timeout=60)
    if not np.isfinite(expected):
        assert r.status == "infeasible"
        return
    assert r.status == "optimal"
    assert r.upper == pytest.approx(expected, rel=2e-5, abs=1e-6)
    assert r.adversarial_label in targets
    _assert_example(net, r, x, targets)


@pytest.mark.parametrize("norm", ["linf", "l1", "l2", "l0"])
def test_eps_max_below_the_distance_is_infeasible(norm):
    ws, bs, x, label = _tiny(2)
    net = verifier.load(mlp_onnx(ws, bs))
    lo, hi = np.zeros(3), np.ones(3)
    linf = enumerate_min_distortion(ws, bs, x, lo, hi, _conjunctions(3, label), "linf")
    assert np.isfinite(linf)
    r = verifier.min_distortion(net, x, norm=norm, label=label, eps_max=0.5 * linf, timeout=60)
    assert r.status == "infeasible" and r.example is None and r.lower == np.inf


def test_misclassified_input_has_distance_zero():
    ws, bs, x, label = _tiny(3)
    net = verifier.load(mlp_onnx(ws, bs))
    other = (label + 1) % 3
    for norm in ("linf", "l1", "l2", "l0"):
        r = verifier.min_distortion(net, x, norm=norm, label=other, timeout=10)
        assert r.status == "optimal" and r.lower == 0 and r.upper < 1e-6  # x itself, in float32
        assert r.adversarial_label != other


@pytest.mark.parametrize("seed", range(3))
def test_timeouts_bracket_the_true_distance(seed):
    rng = np.random.default_rng(50 + seed)
    ws, bs = random_mlp(rng, [4, 6, 4, 3])
    net = verifier.load(mlp_onnx(ws, bs))
    x = rng.uniform(0.2, 0.8, 4)
    label = int(np.argmax(net.forward(x)))
    expected = enumerate_min_distortion(ws, bs, x, np.zeros(4), np.ones(4), _conjunctions(3, label), "l1")
    r = verifier.min_distortion(net, x, norm="l1", label=label, timeout=0.02)
    assert r.time < 1.0  # the time limit holds, up to one forward pass or solver call
    assert r.lower <= expected + 1e-6
    assert r.upper >= expected - 1e-6
    if r.example is not None:
        _assert_example(net, r, x, r.targets)


@pytest.mark.parametrize("strategy", ["bisection", "hybrid"])
@pytest.mark.parametrize("seed", [2, 4, 21, 22, 20])  # seed 20: infeasible
def test_bisection_and_direct_agree(seed, strategy):
    """Both strategies bracket the same distance. Bisection's precision is that of the eps-ball
    verifier near a tie (margins ~1e-7), so its interval may stay open a little."""
    ws, bs, x, label = _tiny(seed)
    net = verifier.load(mlp_onnx(ws, bs))
    direct = verifier.min_distortion(net, x, label=label, strategy="direct", timeout=60)
    bisect = verifier.min_distortion(net, x, label=label, strategy=strategy, timeout=8)
    assert direct.status in ("optimal", "infeasible")
    if direct.status == "infeasible":
        assert bisect.status == "infeasible"
        return
    assert bisect.lower <= direct.upper + 1e-9 and direct.lower <= bisect.upper + 1e-9
    assert bisect.upper == pytest.approx(direct.upper, rel=1e-4)
    assert bisect.lower == pytest.approx(direct.lower, rel=1e-4)


def test_bad_arguments_are_clear_errors():
    ws, bs, x, label = _tiny(0)
    net = verifier.load(mlp_onnx(ws, bs))
    with pytest.raises(InputError, match="norm"):
        verifier.min_distortion(net, x, norm="l3")
    with pytest.raises(InputError, match="out of range"):
        verifier.min_distortion(net, x, label=label, targets=[7])
    with pytest.raises(InputError, match="bisection"):
        verifier.min_distortion(net, x, norm="l1", strategy="bisection")
    with pytest.raises(InputError, match="strategy"):
        verifier.min_distortion(net, x, strategy="fastest")
    with pytest.raises(InputError, match="bounded"):
        verifier.min_distortion(net, x, norm="l0", options=VerifyOptions(domain=None))


# MIPVerify's own test of this network (test/integration/sequential/trained_weights/
# MNIST.WK17a_linf0.1_authors.jl): the minimum L-inf distortion within the 0.1 ball, by 1-based
# test image index; NaN = no adversarial example in the ball, 0 = already misclassified.
MIPVERIFY_WK17A = [(1, np.nan), (9, 0.0940014207), (248, 0.0)]


@pytest.mark.parametrize("index,expected", MIPVERIFY_WK17A)
def test_wk17a_matches_mipverify_reference_values(index, expected):
    from verifier.data import embedded_mnist

    net = verifier.load(DATA / "wk17a_linf0.1.onnx")
    images, labels = embedded_mnist()
    x = images[index - 1].reshape(net.input_shape)
    r = verifier.min_distortion(net, x, "linf", label=int(labels[index - 1]), eps_max=0.1, timeout=240)
    if np.isnan(expected):
        assert r.status == "infeasible"
    else:
        assert r.status == "optimal"
        assert r.upper == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert r.lower == pytest.approx(expected, rel=1e-4, abs=1e-7)
        _assert_example(net, r, x, [j for j in range(10) if j != labels[index - 1]])


def _five_input(seed, sizes):
    """A tiny 5-input network of the boundary-tie search below, its sample and label."""
    rng = np.random.default_rng(seed)
    ws, bs = random_mlp(rng, sizes)
    x = rng.uniform(0.0, 1.0, 5)
    label = int(np.argmax(verifier.load(mlp_onnx(ws, bs)).forward(x)))
    return ws, bs, x, label


def _counting_moves(monkeypatch):
    """Counts the MILP points that failed the float32 re-check and were moved across."""
    from verifier.distortion import boundary, direct

    moved = []

    def confirm_near(checker, x, deadline=float("inf")):
        ex = boundary.confirm_near(checker, x, deadline)
        if ex is not None and checker.confirm(x) is None:
            moved.append(ex.distance)
        return ex

    monkeypatch.setattr(direct, "confirm_near", confirm_near)
    return moved


# Found by searching random 5-input networks (L1, whole domain): the MILP finished "optimal" with
# the enumerated lower bound, but its point sat on the decision boundary on float32's wrong
# side and the outward push could not move it (coordinates on the domain's faces, or a ReLU
# kink): the answer was `unknown` with the attack's upper bound (e.g. 2.73 for 0.94).
BOUNDARY_TIES = [(966, [5, 4, 4, 3]), (1145, [5, 6, 3]), (1376, [5, 4, 4, 3])]


def test_boundary_optimum_is_moved_across_and_matches_enumeration(monkeypatch):
    moved = _counting_moves(monkeypatch)
    for seed, sizes in BOUNDARY_TIES:
        ws, bs, x, label = _five_input(seed, sizes)
        net = verifier.load(mlp_onnx(ws, bs))
        expected = enumerate_min_distortion(ws, bs, x, np.zeros(5), np.ones(5), _conjunctions(3, label), "l1")
        r = verifier.min_distortion(net, x, norm="l1", label=label, timeout=20, strategy="direct")
        assert r.status == "optimal", seed
        assert r.lower == pytest.approx(expected, rel=2e-5, abs=1e-6)
        assert r.upper == pytest.approx(expected, rel=2e-5, abs=1e-6)
        assert r.lower <= expected + 1e-7  # certified: never above the true minimum
        _assert_example(net, r, x, r.targets)
    assert moved  # the premise: some MILP optimum failed the re-check and was moved


# Same search: here no single coordinate lowers the slack at the optimum (every one-sided
# derivative is positive: it sits on faces of the domain and on ReLU kinks, where only moving
# several coordinates together helps), so no step crosses and the MILP is re-solved with a small
# logit margin. Before, `unknown` with the attack's upper bound (e.g. 1.19 for 0.975).
MARGIN_TIES = [(1130, [5, 6, 3]), (35, [5, 6, 3]), (196, [5, 4, 4, 3])]


def test_boundary_optimum_is_closed_by_a_margin_resolve():
    for seed, sizes in MARGIN_TIES:
        ws, bs, x, label = _five_input(seed, sizes)
        net = verifier.load(mlp_onnx(ws, bs))
        expected = enumerate_min_distortion(ws, bs, x, np.zeros(5), np.ones(5), _conjunctions(3, label), "l1")
        r = verifier.min_distortion(net, x, norm="l1", label=label, timeout=20, strategy="direct")
        assert r.stats["margin_solves"] >= 1, seed
        assert r.status == "optimal", seed
        assert r.lower == pytest.approx(expected, rel=2e-5, abs=1e-6)
        assert r.upper == pytest.approx(expected, rel=2e-5, abs=1e-6)
        assert r.lower <= expected + 1e-7 <= r.upper + 2e-7
        _assert_example(net, r, x, r.targets)


@pytest.mark.parametrize("norm", ["linf", "l1", "l2", "l0"])
def test_step_across_a_tie_of_a_linear_classifier(norm):
    """From the closed-form nearest point on a linear classifier's decision boundary (a tie in
    float64, either side in float32), `step_across` reaches an example that onnxruntime and
    float64 both send to the target, at most a hair farther than the tie (l0: the same count)."""
    from verifier.distortion.boundary import step_across
    from verifier.distortion.examples import Checker
    from verifier.spec.ball import InputBox

    rng = np.random.default_rng(7)
    w = np.float32(rng.normal(size=(3, 5))).astype(np.float64)
    b = np.float32(rng.normal(size=3)).astype(np.float64)
    net = verifier.load(mlp_onnx([w], [b]))
    x0 = np.float32(rng.uniform(-1, 1, 5)).astype(np.float64)
    label = int(np.argmax(w @ x0 + b))
    target = next(j for j in range(3) if j != label)
    dw, m = w[label] - w[target], (w[label] - w[target]) @ x0 + b[label] - b[target]
    if norm == "linf":
        tie = x0 - m / np.abs(dw).sum() * np.sign(dw)
    elif norm == "l2":
        tie = x0 - m * dw / (dw @ dw)
    else:  # l1 and l0: the one coordinate with the largest weight difference
        i = int(np.argmax(np.abs(dw)))
        tie = x0.copy()
        tie[i] -= m / dw[i]
    checker = Checker(net, make_goal(3, label, [target]), InputBox(np.full(5, -10.0), np.full(5, 10.0)), x0, norm)
    assert abs(checker.goal.slack(net.forward(tie))) < 1e-12
    ex = step_across(checker, tie)
    assert ex is not None and checker.adversarial(ex.x)
    y = reference_logits(net, ex.x.astype(np.float32))
    assert y[target] >= y[label]
    distance = measure(norm, tie - x0) if norm != "l0" else 1.0
    assert distance * (1 - 1e-12) <= ex.distance <= distance * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize("seed", [2, 9])
def test_hybrid_without_an_example_gives_the_milp_the_time_left(monkeypatch, seed):
    """When the attack finds nothing and bisection's one try at the whole input set is
    undecided (simulated here), the MILP still runs with the time left and finds the minimum,
    instead of `unknown` with most of the budget unspent."""
    import verifier.distortion.minimum as minimum
    from verifier.distortion.direct import SearchOutcome

    ws, bs, x, label = _tiny(seed)
    expected = enumerate_min_distortion(ws, bs, x, np.zeros(3), np.ones(3), _conjunctions(3, label), "linf")
    assert np.isfinite(expected)
    monkeypatch.setattr(minimum, "attack_upper", lambda *a, **k: None)
    monkeypatch.setattr(minimum, "bisection_search",
                        lambda *a, **k: SearchOutcome(0.0, None, stats={"strategy": "bisection", "verifications": 1}))
    r = verifier.min_distortion(mlp_onnx(ws, bs), x, "linf", label=label, strategy="hybrid", timeout=20)
    assert r.status == "optimal" and r.stats["mip_solves"] >= 1
    assert r.lower <= expected + 1e-7 and r.upper == pytest.approx(expected, rel=2e-5, abs=1e-6)


def test_target_the_input_already_has_is_distance_zero():
    """MIPVerify's convention: asking for the class the network already predicts is answered by
    the input itself, at distance 0, in every norm."""
    ws, bs, x, label = _tiny(9)
    net = verifier.load(mlp_onnx(ws, bs))
    for norm in ("linf", "l1", "l2", "l0"):
        r = verifier.min_distortion(net, x, norm=norm, targets=[label], timeout=10)
        assert r.status == "optimal" and r.lower == 0 and r.upper < 1e-6
        assert r.adversarial_label == label
        assert int(np.argmax(reference_logits(net, r.example.astype(np.float32)))) == label


@pytest.mark.parametrize("norm", ["linf", "l1", "l2"])
@pytest.mark.parametrize("seed", [2, 9])
def test_a_verdict_seeds_the_search_and_the_minimum_is_unchanged(norm, seed):
    """A radius proven robust by an eps-ball verification is a lower bound in every norm but
    l0, and a counterexample found there an upper bound: the search starts from both and still
    ends at enumeration's minimum."""
    ws, bs, x, label = _tiny(seed)
    net = verifier.load(mlp_onnx(ws, bs))
    lo, hi = np.zeros(3), np.ones(3)
    linf = enumerate_min_distortion(ws, bs, x, lo, hi, _conjunctions(3, label), "linf")
    expected = enumerate_min_distortion(ws, bs, x, lo, hi, _conjunctions(3, label), norm)
    below, above = 0.9 * linf, 1.2 * linf
    assert verifier.verify(net, x, below, label=label).status.value == "robust"
    found = verifier.verify(net, x, above, label=label)
    assert found.status.value == "adversarial"
    r = verifier.min_distortion(net, x, norm=norm, label=label, timeout=60, robust_radius=below,
                                counterexample=found.counterexample)
    assert r.status == "optimal" and r.lower >= below - 1e-12
    assert r.upper == pytest.approx(expected, rel=2e-5, abs=1e-6)
    assert r.stats["known_lower"] == below
    _assert_example(net, r, x, r.targets)
    # a proven ball that holds the whole input set answers at once: nothing to search
    whole = verifier.min_distortion(net, x, norm=norm, label=label, eps_max=0.5 * linf, robust_radius=0.6 * linf)
    assert whole.status == "infeasible" and whole.strategy == "verdict"


def test_bisection_goes_on_below_an_undecided_radius(monkeypatch):
    """An undecided radius (simulated: every ball above 30 % of the distance is `unknown`, so the
    first midpoint is) no longer ends the search at lower bound 0: radii below it are proven."""
    import verifier.distortion.bisection as bisection
    from verifier.result import Status

    ws, bs, x, label = _tiny(2)
    net = verifier.load(mlp_onnx(ws, bs))
    linf = enumerate_min_distortion(ws, bs, x, np.zeros(3), np.ones(3), _conjunctions(3, label), "linf")
    real = bisection.check_region

    def undecided_near(net_, region, x0, settings, label=None):
        result = real(net_, region, x0, settings, label=label)
        if float(np.max(region.box.hi - x0)) > 0.3 * linf and result.status == Status.ROBUST:
            result.status = Status.UNKNOWN
        return result

    monkeypatch.setattr(bisection, "check_region", undecided_near)
    r = verifier.min_distortion(net, x, "linf", label=label, strategy="bisection", timeout=30)
    assert r.lower <= linf + 1e-9 <= r.upper + 2e-9
    assert 0.2 * linf < r.lower <= 0.3 * linf + 1e-9
