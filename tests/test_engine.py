"""The bound engine over whole graphs (verifier/bounds/graph.py, walker.py, alpha.py) and branch
and bound on it (bab/graph_problem.py), against independent oracles:

- every op of every test network (tests/test_ops.py's, written once with torch ops): interval
  bounds contain sampled values; a linear lower bound (CROWN, and with random slopes) stays
  below the sampled minimum;
- on MLPs the engine's CROWN and alpha-CROWN bounds equal the dense chain engine's to 1e-6;
- branch and bound on residual, conv, pooling and LeakyReLU networks: verdicts and bounds
  against the enumeration oracle (tests/pwl_oracle.py);
- the same verdicts on CUDA as on the CPU, where torch sees a GPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import verifier
from tests.nets import mlp_onnx, random_mlp
from tests.pwl_oracle import min_margin
from tests.test_ops import NETS, export
from verifier.bab.graph_problem import GraphTarget, spec_rows
from verifier.bab.search import BabSettings, branch_and_bound
from verifier.bounds.alpha import layer_bounds, optimise_alpha
from verifier.bounds.graph import compiled
from verifier.bounds.walker import EXACT, Relaxation, backward_bound, extents_of

CUDA = torch.cuda.is_available()


def _box(shape, seed, eps=None):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, shape).ravel()
    eps = float(rng.uniform(0.1, 0.3)) if eps is None else eps
    return x, np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)


def _samples(lo, hi, count, seed):
    rng = np.random.default_rng(seed)
    pts = lo + (hi - lo) * rng.uniform(size=(count, lo.size))
    corners = np.where(rng.uniform(size=(count, lo.size)) < 0.5, lo, hi)
    return torch.as_tensor(np.vstack([pts, corners]))


@pytest.mark.parametrize("name", sorted(NETS))
def test_every_op_bounds_contain_sampled_values(name):
    """Interval bounds of every node contain its sampled values; a CROWN walk (default and random
    slopes) from every node, with random rows, stays below the rows' sampled minimum."""
    f, shape = NETS[name](3)
    net = verifier.load(export(f, shape))
    graph = compiled(net)
    _, lo, hi = _box(shape, 1)
    x_lo, x_hi = torch.as_tensor(lo), torch.as_tensor(hi)
    known = layer_bounds(graph, x_lo, x_hi, steps=0)
    boxes = graph.interval(x_lo, x_hi, known)
    xs = _samples(lo, hi, 400, 2)
    values = graph.forward_all(xs)
    reference = net.forward_all(xs.numpy())
    relax = Relaxation.of(graph, dict(enumerate(boxes)), extents_of(boxes))
    g = torch.Generator().manual_seed(0)
    for i, node in enumerate(graph.nodes):
        np.testing.assert_allclose(values[i].numpy(), reference[node.name], rtol=1e-9, atol=1e-9)
        b_lo, b_hi = boxes[i]
        assert (values[i] >= b_lo - 1e-12).all() and (values[i] <= b_hi + 1e-12).all(), node.name
        if i == 0:
            continue
        rows = torch.randn((1, 5, node.size), generator=g, dtype=EXACT)
        sampled = (values[i] @ rows[0].T).min(0).values
        alphas = {s: torch.rand((1, 5, graph.nodes[s].size), generator=g, dtype=EXACT) for s in graph.splits}
        for a in (None, alphas):
            bound = backward_bound(graph, i, rows, torch.zeros((1, 5), dtype=EXACT), x_lo, x_hi, relax, a).value[0]
            assert (bound <= sampled + 1e-9).all(), node.name


@pytest.mark.parametrize("seed", range(4))
def test_crown_and_alpha_crown_equal_the_chain_engine_on_mlps(seed):
    from verifier.bab.crown import intermediate_bounds
    from verifier.bab.crown import optimise_alpha as chain_alpha
    from verifier.bab.layered import as_layered

    rng = np.random.default_rng(seed)
    ws, bs = random_mlp(rng, [6, 12, 10, 8, 4])
    net = verifier.load(mlp_onnx(ws, bs))
    graph, chain = compiled(net), as_layered(net)
    _, lo, hi = _box((6,), seed, eps=0.2)
    x_lo, x_hi = torch.as_tensor(lo), torch.as_tensor(hi)
    interval = graph.interval(x_lo, x_hi)
    pres = [graph.pre(s) for s in graph.splits]
    c_lo, c_hi = [interval[p][0] for p in pres], [interval[p][1] for p in pres]
    for steps in (0, 10):
        torch.manual_seed(0)
        old_lo, old_hi = intermediate_bounds(chain, x_lo, x_hi, c_lo, c_hi, steps)
        torch.manual_seed(0)
        new = layer_bounds(graph, x_lo, x_hi, {pres[0]: interval[pres[0]]}, steps)
        for k, p in enumerate(pres):
            np.testing.assert_allclose(new[p][0].numpy(), old_lo[k].numpy(), atol=1e-6)
            np.testing.assert_allclose(new[p][1].numpy(), old_hi[k].numpy(), atol=1e-6)
        C = np.eye(4)[[1, 2, 3]] - np.eye(4)[0]
        rows, const = chain.spec_rows(C, np.zeros(3))
        torch.manual_seed(0)
        old = chain_alpha(chain, chain.depth, rows[None], const[None], x_lo, x_hi, old_lo, old_hi, steps)
        boxes = graph.interval(x_lo, x_hi, new)
        g_rows, g_const = spec_rows(graph, C, np.zeros(3))
        torch.manual_seed(0)
        ours = optimise_alpha(graph, graph.output, g_rows[None], g_const[None], x_lo, x_hi, dict(enumerate(boxes)),
                              steps)
        np.testing.assert_allclose(ours.numpy(), old.numpy(), atol=1e-6)


#: Networks whose search runs on the graph engine: residual, conv, pooling, LeakyReLU, Clip.
GRAPH_NETS = ["residual_add", "maxpool", "average_pool", "leaky_relu", "clip", "sub_concat", "pad_constant",
              "batchnorm"]


def _graph_search(net, lo, hi, label, device="cpu", deadline=30.0, settings=None):
    graph = compiled(net, device)
    x_lo, x_hi = torch.as_tensor(lo, device=graph.device), torch.as_tensor(hi, device=graph.device)
    known = layer_bounds(graph, x_lo, x_hi, steps=5)
    boxes = graph.interval(x_lo, x_hi, known)
    target = GraphTarget(graph, graph.output, {i: b for i, b in enumerate(boxes) if b is not None})
    n_out = graph.nodes[graph.output].size
    specs = []
    for j in range(n_out):
        if j != label:
            C = (np.eye(n_out)[label] - np.eye(n_out)[j])[None]
            r, c = spec_rows(graph, C, np.zeros(1))
            specs.append((r.to(graph.device), c.to(graph.device)))
    pres = [graph.pre(s) for s in target.splits]
    found = []

    def check(x):
        found.append(x)
        y = net.forward(np.asarray(x))
        return bool(np.delete(y, label).max() >= y[label])

    out = branch_and_bound(target, specs, x_lo, x_hi, [boxes[p][0] for p in pres], [boxes[p][1] for p in pres],
                           1e-6, __import__("time").perf_counter() + deadline, check,
                           settings or BabSettings(batch=8, steps=6))
    return out, found


@pytest.mark.parametrize("name", GRAPH_NETS)
@pytest.mark.parametrize("seed", range(3))
def test_graph_branch_and_bound_matches_enumeration(name, seed):
    f, shape = NETS[name](20 + seed)
    net = verifier.load(export(f, shape))
    _, lo, hi = _box(shape, seed)
    label = seed % 3
    expected = min_margin(f, shape, lo, hi, label, 3)
    out, found = _graph_search(net, lo, hi, label)
    assert out.status != "unknown" or abs(expected) < 1e-4, (out.status, expected, out.stats)
    if out.status == "proved":
        assert expected > 0
        assert min(out.lower) <= expected + 1e-6
    elif out.status == "counterexample":
        assert expected <= 1e-6
    else:
        assert min(out.lower) <= expected + 1e-6


@pytest.mark.parametrize("name", ["residual_add", "maxpool", "leaky_relu"])
def test_cut_short_graph_search_bound_is_below_the_minimum(name):
    f, shape = NETS[name](31)
    net = verifier.load(export(f, shape))
    _, lo, hi = _box(shape, 5, eps=0.35)
    expected = min_margin(f, shape, lo, hi, 0, 3)
    out, _ = _graph_search(net, lo, hi, 0, settings=BabSettings(batch=1, steps=2, on_witness="continue"),
                           deadline=0.5)
    assert min(out.lower) <= expected + 1e-6


@pytest.mark.skipif(not CUDA, reason="runs where torch sees a CUDA device")
@pytest.mark.parametrize("name", GRAPH_NETS)
def test_cuda_gives_the_cpu_verdicts(name):
    f, shape = NETS[name](40)
    net = verifier.load(export(f, shape))
    _, lo, hi = _box(shape, 7)
    cpu, _ = _graph_search(net, lo, hi, 1)
    gpu, _ = _graph_search(net, lo, hi, 1, device="cuda")
    assert cpu.status == gpu.status
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(cpu.lower, gpu.lower)) or cpu.status != "proved"
