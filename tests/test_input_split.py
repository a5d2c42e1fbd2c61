"""Branch and bound over the input box (bab/input_split.py, search/input_stage.py) on tiny
networks with 2-5 inputs, against independent oracles: the exact least slack by enumerating
activation patterns (an LP each), dense sampling, and a 2-D grid; properties in every VNN-LIB
form ACAS Xu uses (one output against a constant, comparisons between outputs, conjunctions,
disjunctions of conjunctions), and a pinned input (lo = hi) as in ACAS Xu's property 4."""

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import verifier
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import assert_verdict_agrees, enumerate_min_slack
from verifier import Status, VerifyOptions
from verifier.spec.vnnlib import parse_vnnlib

DATA = Path(__file__).parent / "data"

#: Output conditions of a violation, each with -1 as Y_0's coefficient in every row, so that
#: raising Y_0's bias by t raises every disjunct's slack by t.
FORMS = {
    "one output against a constant": "(assert (>= Y_0 0.25))",
    "a conjunction of comparisons between outputs": "(assert (>= Y_0 Y_1))\n(assert (>= Y_0 Y_2))",
    "a disjunction of comparisons": "(assert (or (>= Y_0 Y_1) (>= Y_0 Y_2)))",
    "a disjunction of conjunctions": "(assert (or (and (>= Y_0 Y_1) (>= Y_0 0.1)) (and (>= Y_0 Y_2) (>= Y_0 Y_1))))",
}


def _vnnlib(lo, hi, n_out: int, output: str) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lo))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (a, b) in enumerate(zip(lo, hi)):
        lines += [f"(assert (>= X_{i} {float(a)!r}))", f"(assert (<= X_{i} {float(b)!r}))"]
    return "\n".join(lines + [output]) + "\n"


def _conjunctions(prop) -> list:
    return [(c.C, c.d) for c in prop.regions[0].disjuncts]


def _case(seed: int, form: str, target: float, pinned: bool = False):
    """A random MLP with 2-5 inputs, a wide box (one input pinned if asked) and the property
    `form`, with Y_0's bias moved so that the least slack over the box is about `target`;
    returns the network, the property, the weights and the exact least slack (enumerated on the
    float32 weights the ONNX file holds)."""
    rng = np.random.default_rng(900 + seed)
    n_in = 2 + seed % 4
    sizes = [n_in, 5, 4, 3]
    ws, bs = random_mlp(rng, sizes)
    centre = rng.uniform(-0.5, 0.5, n_in)
    lo, hi = centre - 1.0, centre + 1.0
    if pinned:
        lo[1] = hi[1] = float(np.float32(centre[1]))
    lo, hi = lo.astype(np.float32).astype(np.float64), hi.astype(np.float32).astype(np.float64)
    text = _vnnlib(lo, hi, sizes[-1], FORMS[form])
    prop = parse_vnnlib(text, "case.vnnlib")
    base = enumerate_min_slack(ws, bs, lo, hi, _conjunctions(prop))
    bs[-1][0] = np.float32(bs[-1][0] + base - target)
    exact = enumerate_min_slack(ws, bs, lo, hi, _conjunctions(prop))
    return verifier.load(mlp_onnx(ws, bs)), prop, (ws, bs, lo, hi), exact


def _slacks(ws, bs, prop, x: np.ndarray) -> np.ndarray:
    """The least disjunct slack at each row of x, by a plain forward pass."""
    h = x
    for k, (w, b) in enumerate(zip(ws, bs)):
        h = h @ w.T + b
        if k < len(ws) - 1:
            h = np.maximum(h, 0)
    return np.min([c.slack(h) for c in prop.regions[0].disjuncts], axis=0)


@pytest.mark.parametrize("form", list(FORMS))
def test_verdicts_and_bounds_match_enumeration_for_every_output_form(form):
    """Least slack 0.02 above 0 or below it: the verdict follows the sign, the proven margin is
    never above the exact least slack, a counterexample really violates the property, and no
    sampled point violates a property found robust. The input split decides each proof."""
    verdicts = set()
    for seed in range(4):
        target = 0.02 if seed % 2 == 0 else -0.02
        net, prop, (ws, bs, lo, hi), exact = _case(seed, form, target)
        result = verifier.check(net, prop, timeout=60)
        assert_verdict_agrees(result, exact)
        assert result.decided_by in ("input_split", "attack", "clean")  # the attack may come first
        verdicts.add(result.status)
        if result.status == Status.ADVERSARIAL:
            x = np.asarray(result.counterexample, dtype=np.float64).ravel()
            assert np.all(x >= lo) and np.all(x <= hi)
            assert _slacks(ws, bs, prop, x[None])[0] <= 0
        if result.status == Status.ROBUST:
            samples = np.random.default_rng(seed).uniform(lo, hi, size=(20000, lo.size))
            assert _slacks(ws, bs, prop, samples).min() > 0
    assert verdicts == {Status.ROBUST, Status.ADVERSARIAL}


@pytest.mark.parametrize("rule,trial", [("sensitivity", 2), ("sensitivity", 1), ("widest", 1), ("widest", 3)])
def test_a_pinned_input_is_never_split_and_the_verdict_matches_enumeration(rule, trial):
    """One input fixed (lo = hi, as ACAS Xu's property 4 fixes X_2): the search halves only the
    others, and still decides both ways as enumeration says, whichever rule picks the input."""
    options = VerifyOptions(input_split_rule=rule, input_split_trial=trial, input_split_milp=0)  # halving only
    for seed in range(4):
        target = 0.02 if seed % 2 == 0 else -0.02
        net, prop, (ws, bs, lo, hi), exact = _case(seed + 1, "a conjunction of comparisons between outputs",
                                                   target, pinned=True)
        result = verifier.check(net, prop, timeout=60, options=options)
        assert_verdict_agrees(result, exact)
        if result.status == Status.ROBUST:
            assert result.decided_by == "input_split" and result.stats["input_boxes"] > 1
        if result.status == Status.ADVERSARIAL:
            assert np.asarray(result.counterexample).ravel()[1] == np.float32(lo[1])


def test_two_inputs_agree_with_a_dense_grid():
    """On 2-input networks the least slack over a 401 x 401 grid (an upper bound on the true
    least slack) agrees with the verdict: robust only where the grid sees no violation, the
    proven margin below the grid's least, adversarial where the grid finds a violation."""
    checked = 0
    for seed in range(0, 16, 4):  # seeds whose networks have two inputs
        for target in (0.03, -0.03):
            net, prop, (ws, bs, lo, hi), exact = _case(seed, "a disjunction of comparisons", target)
            assert lo.size == 2
            g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], 401), np.linspace(lo[1], hi[1], 401))
            grid = _slacks(ws, bs, prop, np.stack([g0.ravel(), g1.ravel()], axis=1)).min()
            result = verifier.check(net, prop, timeout=60)
            assert result.margin_lower <= grid + 1e-9
            if result.status == Status.ROBUST:
                assert grid > 0
            if grid < -1e-3:
                assert result.status == Status.ADVERSARIAL
            checked += 1
    assert checked == 8


def test_the_strategy_is_automatic_and_an_option_forces_it():
    """A 3-input region takes the input split by default and ReLU splits under split="relu" (with
    the same verdict); a 784-input eps-ball never takes it under "auto"."""
    net, prop, _, exact = _case(1, "a disjunction of comparisons", 0.02)
    by_input = verifier.check(net, prop, timeout=60)
    by_relu = verifier.check(net, prop, timeout=60, options=VerifyOptions(split="relu"))
    assert by_input.stats.get("split") == "input"
    assert by_relu.stats.get("split") is None and by_relu.decided_by != "input_split"
    assert by_input.status == by_relu.status == Status.ROBUST
    mnist = verifier.load(DATA / "mnist-net_256x2.onnx")
    x = np.full(784, 0.5)
    result = verifier.verify(mnist, x, label=int(np.argmax(mnist.forward(x))), eps=0.001, timeout=30)
    assert result.stats.get("split") is None


def test_acas_xu_property_4_is_proven_by_the_input_split():
    """ACAS Xu network 1_2 on property 4 (X_2 pinned to 0): unsat in the 2021 consensus; the
    input split proves it within its time limit."""
    net = verifier.load(DATA / "acasxu_run2a_1_2.onnx")
    prop = verifier.Property.from_vnnlib(DATA / "acasxu_prop_4.vnnlib")
    result = verifier.check(net, prop, timeout=60)
    assert result.status == Status.ROBUST and result.decided_by == "input_split"


def test_the_time_limit_holds_on_a_search_that_cannot_finish():
    """ACAS Xu network 1_2 over property 1's wide box, asked whether Y_0 can reach -0.0172 (its
    largest sampled value is about -0.0177, so a proof needs many boxes): the run ends within its
    2 s limit plus the promised max(5 %, 2 s) after splitting boxes, with no proof it has not
    earned."""
    net = verifier.load(DATA / "acasxu_run2a_1_2.onnx")
    lo, hi = np.array([0.6, -0.5, -0.5, 0.45, -0.5]), np.array([0.679857769, 0.5, 0.5, 0.5, -0.45])
    prop = parse_vnnlib(_vnnlib(lo, hi, 5, "(assert (>= Y_0 -0.0172))"), "hard.vnnlib")
    samples = np.random.default_rng(0).uniform(lo, hi, size=(2000, 5))
    highest = max(float(net.forward(x)[0]) for x in samples)
    began = time.perf_counter()
    result = verifier.check(net, prop, timeout=2.0)
    assert time.perf_counter() - began <= 4.0
    assert result.stats["input_boxes"] > 0
    assert result.margin_lower <= -0.0172 - highest + 1e-9  # the slack c - Y_0 at the best sample
    if result.status == Status.ADVERSARIAL:
        assert float(result.counterexample_outputs[0]) >= -0.0172


@pytest.mark.skipif(not torch.cuda.is_available(), reason="runs where torch sees a CUDA device")
def test_input_split_on_cuda_gives_the_cpu_verdicts():
    for seed in range(4):
        net, prop, _, exact = _case(seed, "a disjunction of conjunctions", 0.02 if seed % 2 == 0 else -0.02)
        cpu = verifier.check(net, prop, timeout=60)
        gpu = verifier.check(net, prop, timeout=60, options=VerifyOptions(device="cuda"))
        assert cpu.status == gpu.status
        assert_verdict_agrees(gpu, exact)


def _search_args(seed: int, target: float):
    """A case's network compiled, its one region's disjuncts as specs, the box, root bounds of
    -inf, and the exact least slack."""
    from verifier.bab.graph_problem import spec_rows
    from verifier.bab.input_split import Specs
    from verifier.bounds.graph import compiled
    from verifier.bounds.walker import EXACT

    net, prop, (ws, bs, lo, hi), exact = _case(seed, "a disjunction of comparisons", target)
    specs = Specs.of([spec_rows(c.C, c.d) for c in prop.regions[0].disjuncts])
    lower = torch.full((specs.count,), -np.inf, dtype=EXACT)
    return (compiled(net, "cpu", EXACT), specs, torch.as_tensor(lo), torch.as_tensor(hi), lower), net, prop, exact


def test_boxes_shared_over_two_processes_match_enumeration():
    """Rounds of one box, so the search hands its open boxes to a helper after a few: every
    verdict agrees with enumeration, every bound lies below the exact least slack, a point
    found violates the property, and most cases did share their boxes."""
    from verifier.bab.input_split import InputSplitSettings
    from verifier.bab.parallel import SpecWorkers

    handed = 0
    with SpecWorkers(2) as workers:
        for seed in range(8):
            args, net, prop, exact = _search_args(seed, 0.005 if seed % 2 == 0 else -0.005)

            def check(x, net=net, prop=prop) -> bool:
                return prop.min_slack(net.forward(np.asarray(x, dtype=np.float64))) <= 0

            # no descent: the violations are then found by the shares' searches, not before handing off
            out = workers.input_search(*args, 1e-5, time.perf_counter() + 60, check,
                                       InputSplitSettings(batch=1, descent=0, milp_relus=0))
            handed += out.stats.get("input_handed_off", 0) > 0
            assert float(np.min(out.lower)) <= exact + 1e-9
            assert out.status == ("proved" if exact > 0 else "counterexample"), (seed, exact, out.status)
            if out.status == "counterexample":
                assert check(out.x)
    assert handed >= 4


def test_a_lost_share_proves_nothing_below_its_boxes():
    """merge_boxes with a share lost (None): not proved, and each spec's bound is at most the
    bounds the lost share's boxes were dealt with."""
    from verifier.bab.input_split import InputSplitSettings, input_branch_and_bound
    from verifier.bab.parallel import merge_boxes

    for seed in range(0, 12, 2):  # robust cases; the first whose search reaches the handoff
        args, net, prop, exact = _search_args(seed, 0.02)
        first = input_branch_and_bound(*args, 1e-5, time.perf_counter() + 60, lambda x: False,
                                       InputSplitSettings(batch=1, milp_relus=0), handoff=2)
        if first.status == "handoff":
            break
    assert first.status == "handoff"
    deals = [tuple(t[i::2] for t in first.open) for i in range(2)]
    own = input_branch_and_bound(*args, 1e-5, time.perf_counter() + 60, lambda x: False,
                                 InputSplitSettings(batch=1, milp_relus=0), start=deals[0])
    assert own.status == "proved"
    merged = merge_boxes(first, [own, None], deals, lambda x: False)
    assert merged.status == "unknown"
    assert np.all(merged.lower <= deals[1][2].min(dim=0).values.numpy())
    other = input_branch_and_bound(*args, 1e-5, time.perf_counter() + 60, lambda x: False,
                                   InputSplitSettings(batch=1, milp_relus=0), start=deals[1])
    whole = merge_boxes(first, [own, other], deals, lambda x: False)
    assert whole.status == "proved" and float(np.min(whole.lower)) <= exact + 1e-9


def test_descent_inside_a_box_finds_a_violation_its_corners_and_centre_miss():
    """y = |x_0 - 0.3| - 0.01 over [0, 1]^2 is negative only within 0.01 of x_0 = 0.3: no corner
    and not the centre, but the sign-gradient steps from them reach it; the point found
    violates the property by a plain forward pass."""
    from verifier.bab.input_split import Specs, _hunt
    from verifier.bounds.boxes import box_bounds
    from verifier.bounds.graph import compiled
    from verifier.bounds.walker import EXACT

    ws = [np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([[1.0, 1.0]])]
    bs = [np.array([-0.3, 0.3]), np.array([-0.01])]
    graph = compiled(verifier.load(mlp_onnx(ws, bs)), "cpu", EXACT)
    specs = Specs.of([(torch.ones((1, 1), dtype=EXACT), torch.zeros(1, dtype=EXACT))])
    lo, hi = torch.zeros((1, 2), dtype=EXACT), torch.ones((1, 2), dtype=EXACT)
    bounds = box_bounds(graph, lo, hi, specs.rows, specs.const)
    spec_lower = specs.per_spec(bounds.value)
    assert float(spec_lower[0, 0]) < 0

    def violates(x: torch.Tensor) -> bool:
        return float(np.abs(x[0].item() - 0.3) - 0.01) <= 0

    missed, seen = _hunt(graph, specs, lo, hi, bounds, spec_lower, 1e-5, violates, descent=0)
    assert missed is None and float(seen[0]) > 0  # the least slack seen: at the corners and centre
    found, _ = _hunt(graph, specs, lo, hi, bounds, spec_lower, 1e-5, violates, descent=6)
    assert found is not None and violates(found)
    assert bool(((found >= lo[0]) & (found <= hi[0])).all())


def test_a_box_milp_decides_each_disjunct_as_enumeration_does():
    """bab/input_leaf.box_milp over a whole box, from its CROWN layer bounds, one disjunct at a
    time: least slack 0.002 above 0 or below it (too close for the box's CROWN bound to tell):
    proven exactly where enumeration says the disjunct holds, and where it does not, a point
    in the box whose plain forward pass violates it."""
    from verifier.bab.graph_problem import spec_rows
    from verifier.bab.input_leaf import box_milp
    from verifier.bounds.boxes import LayerPacking, box_bounds
    from verifier.bounds.graph import compiled
    from verifier.bounds.walker import EXACT

    seen = set()
    for form, seed in itertools.product(FORMS, range(2)):
        net, prop, (ws, bs, lo, hi), _ = _case(seed, form, 0.002 if seed % 2 == 0 else -0.002)
        graph = compiled(net, "cpu", EXACT)
        packing = LayerPacking(graph)
        x_lo, x_hi = torch.as_tensor(lo).reshape(1, -1), torch.as_tensor(hi).reshape(1, -1)
        for c in prop.regions[0].disjuncts:
            exact = enumerate_min_slack(ws, bs, lo, hi, [(c.C, c.d)])
            rows, const = spec_rows(c.C, c.d)
            layers = box_bounds(graph, x_lo, x_hi, rows, const, packing=packing).layers
            verdict = box_milp(graph, packing, x_lo[0], x_hi[0], layers[0], rows, const, 1e-5, 30.0)
            if exact > 1e-4:
                assert verdict.bound > 1e-5 and verdict.bound <= exact + 1e-6, (seed, exact, verdict.bound)
                seen.add("proven")
            elif exact < -1e-4:
                assert verdict.bound <= 1e-5 and verdict.x is not None, (seed, exact, verdict.bound)
                assert np.all(verdict.x >= lo) and np.all(verdict.x <= hi)
                assert float(c.slack(net.forward(verdict.x))[0]) <= 1e-6
                seen.add("refuted")
    assert seen == {"proven", "refuted"}


def test_a_search_decided_by_box_milps_matches_enumeration():
    """Every popped box with a MILP (any number of unstable ReLUs, no ratio): the verdicts
    follow enumeration on least slacks of +-0.001, a point found violates the property, the
    proven bound lies below the exact least slack, and the MILPs closed boxes (a root bound or
    point may decide a case first)."""
    from verifier.bab.input_split import InputSplitSettings, input_branch_and_bound

    settings = InputSplitSettings(batch=4, milp_relus=1000, milp_ratio=0.0, milp_seconds=30.0, descent=0)
    closed = 0
    for seed in range(6):
        args, net, prop, exact = _search_args(seed, 0.001 if seed % 2 == 0 else -0.001)

        def check(x, net=net, prop=prop) -> bool:
            return prop.min_slack(net.forward(np.asarray(x, dtype=np.float64))) <= 0

        out = input_branch_and_bound(*args, 1e-5, time.perf_counter() + 60, check, settings)
        assert out.status == ("proved" if exact > 0 else "counterexample"), (seed, exact, out.status)
        if out.status == "counterexample":
            assert check(out.x)
        else:
            assert float(np.min(out.lower)) <= exact + 1e-9
        closed += out.stats.get("input_milp_closed", 0)
    assert closed > 0
