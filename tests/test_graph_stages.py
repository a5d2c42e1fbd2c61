"""Refinement and output constraints on the graph engine (bab/graph_refine.py,
bab/graph_output_bounds.py, search/graph_stage.py), against independent oracles:

- on MLPs, refined bounds reach each unstable neuron's exact range (activation-pattern
  enumeration), and bounds under a disjunct's negation contain the exact range on that set;
- on residual, pooling and LeakyReLU networks, refined bounds contain every sampled value;
- the whole pipeline on the graph engine with refinement and output bounds forced on agrees with
  enumeration (tests/pwl_oracle.py) on those networks.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import verifier
from tests.nets import mlp_onnx
from tests.oracles import assert_verdict_agrees, enumerate_constrained_ranges, enumerate_min_slack
from tests.pwl_oracle import enumerate_min, enumerate_row_minima
from tests.test_engine import _box, _samples
from tests.test_ops import NETS, _cast, _params, export
from verifier.bab import graph_refine
from verifier.bab.graph_output_bounds import constrained_bounds, crossed
from verifier.bounds.alpha import layer_bounds, optimise_alpha
from verifier.bounds.graph import compiled
from verifier.bounds.interval import interval_bounds
from verifier.spec.ball import InputBox

TOLERANCE = 1e-5


def _known(net, box):
    """The graph, box tensors and interval bounds of every node, keyed by node index."""
    graph = compiled(net)
    bounds = interval_bounds(net, box.lo, box.hi)
    known = {i: (torch.as_tensor(bounds[n.name][0])[None], torch.as_tensor(bounds[n.name][1])[None])
             for i, n in enumerate(graph.nodes) if i > 0}
    return graph, torch.as_tensor(box.lo), torch.as_tensor(box.hi), known


def _refined(net, box, budget: float, layers: int = 8, workers=None):
    graph, x_lo, x_hi, known = _known(net, box)
    new, stats = graph_refine.refined_bounds(graph, x_lo, x_hi, known, alpha_steps=5, layer_budget=budget,
                                             layers=layers, deadline=time.perf_counter() + 4 * budget,
                                             workers=workers)
    return graph, known, new, stats


@pytest.mark.parametrize("seed", range(6))
def test_graph_refinement_reaches_the_exact_range_on_mlps(seed):
    """As the chain engine's refinement (tests/test_refine.py): sound, never looser, and with
    time to finish exact on every neuron that is unstable after alpha-CROWN."""
    from tests.test_refine import SIZES, _case, _exact_range

    ws, bs, box = _case(seed)
    net = verifier.load(mlp_onnx(ws, bs))
    graph, known, new, stats = _refined(net, box, budget=30.0)
    _, _, alpha, _ = _refined(net, box, budget=30.0, layers=0)
    assert stats["refine_domains"] > 0 or seed % 2  # the searches ran (on most seeds)
    for k in range(1, len(SIZES) - 2):
        p = graph.pre(graph.splits[k])
        for j in range(SIZES[k + 1]):
            low, high = _exact_range(ws, bs, box, k, j)
            l, u = float(new[p][0][0, j]), float(new[p][1][0, j])
            assert l <= low + 1e-7 and u >= high - 1e-7
            assert l >= float(known[p][0][0, j]) and u <= float(known[p][1][0, j])
            if float(alpha[p][0][0, j]) < 0 < float(alpha[p][1][0, j]):
                assert (abs(l - low) <= 1e-5) if low <= 0 else l > 0
                assert (abs(u - high) <= 1e-5) if high >= 0 else u < 0


def test_graph_refinement_shared_over_processes_reaches_the_same_bounds():
    from tests.test_refine import _case
    from verifier.bab.parallel import SpecWorkers

    ws, bs, box = _case(1)
    net = verifier.load(mlp_onnx(ws, bs))
    graph, _, one, _ = _refined(net, box, budget=30.0)
    with SpecWorkers(2) as workers:
        _, _, two, stats = _refined(net, box, budget=30.0, workers=workers)
    assert stats["refine_domains"] > 0
    for s in graph.splits:
        p = graph.pre(s)
        torch.testing.assert_close(one[p][0], two[p][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(one[p][1], two[p][1], atol=1e-5, rtol=0)


def pooled_branches_net(seed):
    """conv -> ReLU -> max pool, whose result and the ReLUs themselves both feed the next ReLU
    layer: split nodes after a Maximum and two paths into one Add."""
    w, v, u, o, c = _params(seed, (2, 1, 2, 2), (4, 2), (4, 8), (3, 4), (3,))

    def f(x, nl):
        cw, lv, lu, lo, lc = _cast((w, v, u, o, c), x)
        h = nl.relu(F.conv2d(x, cw))  # (1, 3, 3) -> (2, 2, 2)
        m = nl.max_pool(h, 2, 1).flatten(1)  # (2, 1, 1)
        g = nl.relu(F.linear(m, lv) + F.linear(h.flatten(1), lu / 2))
        return F.linear(g, lo, lc)
    return f, (1, 3, 3)


GRAPHS = {**NETS, "pooled_branches": pooled_branches_net}
REFINABLE = ["residual_add", "batchnorm", "clip", "pooled_branches"]


@pytest.mark.parametrize("name", REFINABLE)
def test_graph_refinement_contains_sampled_values(name):
    """On graphs with convolutions, residual adds and pooling: every refined split input holds
    every sampled value, and is never looser than alpha-CROWN's; a finished layer is skipped
    only while the bounds before it are unchanged."""
    f, shape = GRAPHS[name](5)
    net = verifier.load(export(f, shape))
    _, lo, hi = _box(shape, 3, eps=0.3)
    box = InputBox(lo, hi)
    graph, known, new, _ = _refined(net, box, budget=2.0)
    assert graph_refine.refinable(graph), "the test net has a split node to refine"
    _, _, alpha, _ = _refined(net, box, budget=2.0, layers=0)
    values = graph.forward_all(_samples(lo, hi, 500, 4))
    for s in graph.splits:
        p = graph.pre(s)
        assert bool((new[p][0] <= values[p].min(0).values + 1e-7).all())
        assert bool((new[p][1] >= values[p].max(0).values - 1e-7).all())
        assert bool((new[p][0] >= alpha[p][0] - 1e-9).all()) and bool((new[p][1] <= alpha[p][1] + 1e-9).all())
    finished: dict = {}
    x_lo, x_hi = torch.as_tensor(lo), torch.as_tensor(hi)
    first, _ = graph_refine.refined_bounds(graph, x_lo, x_hi, known, 5, 30.0, 8, time.perf_counter() + 120,
                                           finished=finished)
    again, stats = graph_refine.refined_bounds(graph, x_lo, x_hi, first, 5, 30.0, 8, time.perf_counter() + 120,
                                               finished=finished)
    assert stats.get("refine_skipped", 0) == len(finished)
    for p in first:
        assert torch.equal(first[p][0], again[p][0]) and torch.equal(first[p][1], again[p][1])


def _constrained_case(seed: int):
    from tests.test_output_bounds import _case

    ws, bs, box, conj, net = _case(seed, share=0.1)
    graph, x_lo, x_hi, known = _known(net, box)
    known = layer_bounds(graph, x_lo, x_hi, known, steps=10)
    rows, const = torch.as_tensor(conj.C), -torch.as_tensor(conj.d)
    new = constrained_bounds(graph, rows, const, TOLERANCE, x_lo, x_hi, known, layers=3, rounds=2)
    return ws, bs, box, conj, graph, known, new


@pytest.mark.parametrize("seed", range(6))
def test_graph_constrained_bounds_hold_on_the_disjuncts_negation(seed):
    ws, bs, box, conj, graph, known, new = _constrained_case(seed)
    exact = enumerate_constrained_ranges(ws, bs, box.lo, box.hi, conj.C, conj.d + TOLERANCE)
    assert exact and not crossed(new)
    for (k, j), (low, high) in exact.items():
        p = graph.pre(graph.splits[k])
        assert float(new[p][0][0, j]) <= low + 1e-7 and float(new[p][1][0, j]) >= high - 1e-7
        assert float(new[p][0][0, j]) >= float(known[p][0][0, j]) and float(new[p][1][0, j]) <= float(known[p][1][0, j])


def test_graph_constrained_bounds_cut_into_the_unconstrained_exact_range():
    """Some bounds lie strictly inside a neuron's exact range over the whole box: only the
    constraint can put them there."""
    inside = 0
    for seed in range(6):
        ws, bs, box, conj, graph, _, new = _constrained_case(seed)
        whole = enumerate_constrained_ranges(ws, bs, box.lo, box.hi, conj.C, conj.d + 1e9)
        for (k, j), (low, high) in whole.items():
            p = graph.pre(graph.splits[k])
            inside += (float(new[p][0][0, j]) > low + 1e-3) + (float(new[p][1][0, j]) < high - 1e-3)
    assert inside >= 5


@pytest.mark.parametrize("seed", range(4))
def test_graph_constrained_bounds_bracket_the_tolerance(seed):
    """A disjunct whose least slack is tol/2 is never proven by its constrained bounds (U holds
    its minimiser); one at 0.02 is (U is empty)."""
    from tests.test_output_bounds import _case
    from verifier.spec.property import Conjunction

    for least, provable in ((TOLERANCE / 2, False), (0.02, True)):
        ws, bs, box, conj, net = _case(seed, share=0.1)
        true_min = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
        conj = Conjunction(conj.C, conj.d + true_min - least)
        graph, x_lo, x_hi, known = _known(net, box)
        known = layer_bounds(graph, x_lo, x_hi, known, steps=10)
        rows, const = torch.as_tensor(conj.C), -torch.as_tensor(conj.d)
        new = constrained_bounds(graph, rows, const, TOLERANCE, x_lo, x_hi, known, layers=3, rounds=2)
        boxes = dict(enumerate(graph.interval(x_lo, x_hi, new)))
        proved = crossed(new) or float(optimise_alpha(graph, graph.output, rows[None], const[None], x_lo, x_hi,
                                                      boxes, 20).max()) > TOLERANCE
        assert proved == provable


#: Every search stage on, and no MIP stage (these small nets would take it; tests/test_mip_stage.py has it).
FORCED = dict(engine="graph", split="relu", attack_steps=0, attack_restarts=0, lp_tightening=False, symbolic=False, alpha_steps=0,
              alpha_budget=0.0, bab_probe=0.0, mip_stage_relus=0,
              refine_budget=0.5, refine_first_pass=0.2, output_bounds="on", output_bound_layers=2)


@pytest.mark.parametrize("name", ["residual_add", "batchnorm", "clip", "maxpool", "leaky_relu"])
def test_graph_pipeline_with_refinement_and_output_bounds_matches_enumeration(name):
    """verifier.check on the graph engine with every stage forced on (probe, refinement, output
    bounds, final search), on properties whose disjuncts are shifted to a least slack of +-0.03
    (enumerated), so that bounds alone rarely decide: verdicts and margins against enumeration,
    and on some of the cases the stages past alpha-CROWN ran."""
    from verifier import InputRegion, Property, VerifyOptions
    from verifier.spec.property import Conjunction

    stages = set()
    for seed in range(3):
        f, shape = GRAPHS[name](50 + seed)
        net = verifier.load(export(f, shape))
        _, lo, hi = _box(shape, 60 + seed, eps=0.3)
        rng = np.random.default_rng(seed)
        conjs = []
        for target in (0.03, -0.03 if seed == 1 else 0.03):
            row = rng.normal(size=(1, 3))
            conjs.append(Conjunction(row, np.array([enumerate_min(f, shape, lo, hi, row) - target])))
        expected = min(enumerate_min(f, shape, lo, hi, c.C) - c.d[0] for c in conjs)
        prop = Property([InputRegion(InputBox(lo, hi), conjs)], lo.size, 3)
        r = verifier.check(net, prop, timeout=60, options=VerifyOptions(**FORCED))
        assert r.stats.get("engine", "graph") == "graph"
        assert_verdict_agrees(r, expected)
        stages |= {key for key in ("refine_time", "time_output_bounds", "time_bab") if key in r.stats}
    needed = {"time_bab", "time_output_bounds"} | ({"refine_time"} if name in REFINABLE else set())
    assert stages >= needed, stages


@pytest.mark.parametrize("seed", range(4))
def test_graph_pipeline_on_deep_mlps_matches_enumeration(seed):
    """Deep MLPs on the graph engine with refinement and output bounds forced on."""
    from tests.test_bab import SIZES, _case
    from verifier import InputRegion, Property

    ws, bs, box, conj = _case(300 + seed)
    expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
    net = verifier.load(mlp_onnx(ws, bs))
    prop = Property([InputRegion(box, [conj])], SIZES[0], SIZES[-1])
    r = verifier.check(net, prop, timeout=60, options=verifier.VerifyOptions(**FORCED))
    assert r.stats.get("engine", "graph") == "graph"
    assert_verdict_agrees(r, expected)


def _run(net, lo, hi, conjs, device="cpu", timeout=60.0):
    """A RunState over the box with `conjs` as its disjuncts, as check_region makes it."""
    from verifier import InputRegion, VerifyOptions
    from verifier.search.run_state import RunState

    region = InputRegion(InputBox(lo, hi), conjs)
    options = VerifyOptions(device=device, timeout=timeout)
    return RunState(net, region, None, options, time.perf_counter(), np.full(len(conjs), -np.inf), lo.copy())


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_crown_stage_contains_samples_and_matches_the_numpy_walk(name):
    """The cheap CROWN stage every run starts with (graph_stage.crown, the bound engine's walk):
    its layer bounds contain every sampled value, its row bounds are below each row's exact
    minimum (enumeration); and on graphs without a max they equal the
    independent numpy back-substitution (bounds/symbolic.py) to 1e-6."""
    from verifier.bounds.symbolic import backward_lower, symbolic_bounds
    from verifier.search import graph_stage
    from verifier.spec.property import Conjunction

    f, shape = GRAPHS[name](70)
    net = verifier.load(export(f, shape))
    _, lo, hi = _box(shape, 71, eps=0.25)
    rows = np.random.default_rng(72).normal(size=(4, 3))
    offsets = np.zeros(4)
    run = _run(net, lo, hi, [Conjunction(rows, offsets)])
    intervals = interval_bounds(net, lo, hi)
    bounds, lower = graph_stage.crown(run, intervals, rows, offsets)

    exact = enumerate_row_minima(f, shape, lo, hi, rows)
    assert np.all(lower <= exact + 1e-6)
    graph = compiled(net)
    values = graph.forward_all(_samples(lo, hi, 300, 73))
    for i, node in enumerate(graph.nodes):
        if node.name in bounds and values[i] is not None:
            v = values[i].numpy()
            assert np.all(v >= bounds[node.name][0] - TOLERANCE) and np.all(v <= bounds[node.name][1] + TOLERANCE)
    if "max" not in name and name != "pooled_branches":  # the numpy walk relaxes a max otherwise
        numpy_bounds = symbolic_bounds(net, intervals)
        numpy_lower = backward_lower(net, numpy_bounds, net.output_node, rows, -offsets)
        np.testing.assert_allclose(lower, numpy_lower, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="runs where torch sees a CUDA device")
@pytest.mark.parametrize("name", ["residual_add", "batchnorm", "clip", "maxpool", "leaky_relu"])
def test_check_on_cuda_gives_the_cpu_verdicts(name):
    """verifier.check end to end with device="cuda" (every stage, defaults otherwise): the CPU's
    verdicts, both agreeing with enumeration."""
    from verifier import InputRegion, Property, VerifyOptions
    from verifier.spec.property import Conjunction

    for seed in range(3):
        f, shape = GRAPHS[name](80 + seed)
        net = verifier.load(export(f, shape))
        _, lo, hi = _box(shape, 90 + seed, eps=0.3)
        row = np.random.default_rng(seed).normal(size=(1, 3))
        target = 0.03 if seed != 1 else -0.03
        conj = Conjunction(row, np.array([enumerate_min(f, shape, lo, hi, row) - target]))
        prop = Property([InputRegion(InputBox(lo, hi), [conj])], lo.size, 3)
        cpu = verifier.check(net, prop, timeout=60, options=VerifyOptions(device="cpu"))
        gpu = verifier.check(net, prop, timeout=60, options=VerifyOptions(device="cuda"))
        assert gpu.status == cpu.status
        assert_verdict_agrees(gpu, target)
