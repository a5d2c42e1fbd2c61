"""Layer bounds refined by branch and bound, against the exact extremes of every neuron
(enumeration of activation patterns of the layers before it, one LP each).

Given time to finish on a tiny network, the refinement must reach each neuron's exact minimum
and maximum wherever the neuron really is unstable that way (a real point refutes the side, so
the bound can only be tightened, not proven) — not stop at the first real point — and prove the
side wherever it holds. Every bound must contain the exact range, whatever the budget.
"""

import time
from functools import lru_cache

import numpy as np
import pytest
import torch

import verifier
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import enumerate_min_slack
from verifier.bab.layered import as_layered
from verifier.bab.refine import refined_bounds
from verifier.bounds.interval import interval_bounds
from verifier.spec.ball import InputBox

SIZES = [3, 4, 4, 3, 2]  # ReLU layers of 4, 4 and 3 neurons


def _case(seed: int):
    rng = np.random.default_rng(seed)
    ws, bs = random_mlp(rng, SIZES)
    centre = rng.uniform(0.2, 0.8, SIZES[0])
    eps = float(rng.uniform(0.2, 0.5))
    return ws, bs, InputBox(np.clip(centre - eps, 0, 1), np.clip(centre + eps, 0, 1))


def _exact_range(ws, bs, box, k: int, j: int) -> tuple[float, float]:
    """(min, max) over the box of neuron j of ReLU layer k's pre-activation."""
    head_w, head_b = ws[:k] + [ws[k][j:j + 1]], bs[:k] + [bs[k][j:j + 1]]
    low = enumerate_min_slack(head_w, head_b, box.lo, box.hi, [(np.ones((1, 1)), np.zeros(1))])
    neg = enumerate_min_slack(head_w, head_b, box.lo, box.hi, [(-np.ones((1, 1)), np.zeros(1))])
    return low, -neg


def _refine(ws, bs, box, budget: float, layers: int = 8):
    """(interval bounds, refined bounds) per ReLU layer; layers=0 refines nothing, so the
    result is alpha-CROWN's alone."""
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    bounds = interval_bounds(net, box.lo, box.hi)
    lo = [torch.as_tensor(bounds[p][0])[None] for p in layered.pre_nodes]
    hi = [torch.as_tensor(bounds[p][1])[None] for p in layered.pre_nodes]
    x_lo, x_hi = torch.as_tensor(box.lo), torch.as_tensor(box.hi)
    new_lo, new_hi, _ = refined_bounds(layered, x_lo, x_hi, lo, hi, alpha_steps=5, layer_budget=budget,
                                       layers=layers, deadline=time.perf_counter() + 4 * budget)
    return lo, hi, new_lo, new_hi


@lru_cache(maxsize=None)
def _finished_case(seed: int):
    """A case refined with time to finish, its alpha-CROWN bounds, and every neuron's exact range."""
    ws, bs, box = _case(seed)
    lo, hi, new_lo, new_hi = _refine(ws, bs, box, budget=30.0)
    _, _, alpha_lo, alpha_hi = _refine(ws, bs, box, budget=30.0, layers=0)
    exact = {(k, j): _exact_range(ws, bs, box, k, j) for k in range(1, len(SIZES) - 2) for j in range(SIZES[k + 1])}
    return lo, hi, new_lo, new_hi, alpha_lo, alpha_hi, exact


@pytest.mark.parametrize("seed", range(8))
def test_refined_bounds_reach_the_exact_range_of_unstable_neurons(seed):
    lo, hi, new_lo, new_hi, alpha_lo, alpha_hi, exact = _finished_case(seed)
    for (k, j), (low, high) in exact.items():
        l, u = float(new_lo[k][0, j]), float(new_hi[k][0, j])
        assert l <= low + 1e-7 and u >= high - 1e-7  # sound
        assert l >= float(lo[k][0, j]) and u <= float(hi[k][0, j])  # never looser
        if float(alpha_lo[k][0, j]) < 0 < float(alpha_hi[k][0, j]):  # unstable when refinement starts
            # A side that real points reach is tightened to the exact value (up to the leaf
            # LP's 1e-6 loosening of split constraints); one they do not reach is proven.
            assert (abs(l - low) <= 1e-5) if low <= 0 else l > 0
            assert (abs(u - high) <= 1e-5) if high >= 0 else u < 0


def test_refinement_tightens_truly_unstable_neurons_beyond_alpha_crown():
    """The cases above are not vacuous: over the seeds, neurons that are truly unstable got
    bounds tighter than alpha-CROWN's (which is all that a refinement stopping at the first
    real point would leave them)."""
    total = 0
    for seed in range(8):
        _, _, new_lo, new_hi, alpha_lo, alpha_hi, exact = _finished_case(seed)
        for (k, j), (low, high) in exact.items():
            if low < 0 < high:
                total += float(new_lo[k][0, j]) > float(alpha_lo[k][0, j]) + 1e-3
                total += float(new_hi[k][0, j]) < float(alpha_hi[k][0, j]) - 1e-3
    assert total >= 3


@pytest.mark.parametrize("seed", range(4))
def test_refined_bounds_cut_short_are_sound(seed):
    ws, bs, box = _case(100 + seed)
    _, _, new_lo, new_hi = _refine(ws, bs, box, budget=0.01)
    for k in range(1, len(SIZES) - 2):
        for j in range(SIZES[k + 1]):
            low, high = _exact_range(ws, bs, box, k, j)
            assert float(new_lo[k][0, j]) <= low + 1e-7 and float(new_hi[k][0, j]) >= high - 1e-7


def _inputs(ws, bs, box):
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    bounds = interval_bounds(net, box.lo, box.hi)
    lo = [torch.as_tensor(bounds[p][0])[None] for p in layered.pre_nodes]
    hi = [torch.as_tensor(bounds[p][1])[None] for p in layered.pre_nodes]
    return layered, torch.as_tensor(box.lo), torch.as_tensor(box.hi), lo, hi


@pytest.mark.parametrize("seed", range(4))
def test_a_finished_layer_is_skipped_only_while_the_layers_before_it_are_unchanged(seed):
    """A layer whose search closed every domain is recorded; a second pass with the same record
    skips it and gives the same bounds, which still contain every neuron's exact range."""
    ws, bs, box = _case(seed)
    layered, x_lo, x_hi, lo, hi = _inputs(ws, bs, box)
    finished: dict = {}
    first_lo, first_hi, _ = refined_bounds(layered, x_lo, x_hi, lo, hi, alpha_steps=5, layer_budget=30.0,
                                           layers=8, deadline=time.perf_counter() + 120, finished=finished)
    assert 1 in finished  # layer 1 rests on the exact first layer alone: its search finishes
    again_lo, again_hi, stats = refined_bounds(layered, x_lo, x_hi, first_lo, first_hi, alpha_steps=5,
                                               layer_budget=30.0, layers=8, deadline=time.perf_counter() + 120,
                                               finished=finished)
    assert stats.get("refine_skipped", 0) >= 1
    for a, b in zip(first_lo + first_hi, again_lo + again_hi):
        assert torch.equal(a, b)
    # Changed bounds before a recorded layer (a looser first layer) mean no skip.
    looser_lo = [first_lo[0] - 1.0] + first_lo[1:]
    _, _, stats = refined_bounds(layered, x_lo, x_hi, looser_lo, first_hi, alpha_steps=5, layer_budget=30.0,
                                 layers=8, deadline=time.perf_counter() + 120, finished=dict(finished))
    assert stats.get("refine_skipped", 0) == 0
    for (k, j), (low, high) in _finished_case(seed)[6].items():
        assert float(again_lo[k][0, j]) <= low + 1e-7 and float(again_hi[k][0, j]) >= high - 1e-7


def test_a_search_stopped_by_its_deadline_or_memory_is_not_exhausted():
    ws, bs, box = _case(0)
    layered, x_lo, x_hi, lo, hi = _inputs(ws, bs, box)
    finished: dict = {}
    refined_bounds(layered, x_lo, x_hi, lo, hi, alpha_steps=5, layer_budget=30.0, layers=8,
                   deadline=time.perf_counter() - 1.0, finished=finished)
    assert finished == {}
    refined_bounds(layered, x_lo, x_hi, lo, hi, alpha_steps=5, layer_budget=30.0, layers=8,
                   deadline=time.perf_counter() + 120, finished=finished, max_memory=1)
    assert finished == {}


@pytest.mark.parametrize("seed", range(3))
def test_specs_shared_over_processes_give_sound_bounds_that_reach_the_exact_range(seed):
    """The same refinement with each layer's specs dealt out over two processes (bab/parallel.py):
    every bound contains the exact range and, with time to finish, reaches it as in one process."""
    from verifier.bab.parallel import SpecWorkers
    ws, bs, box = _case(seed)
    layered, x_lo, x_hi, lo, hi = _inputs(ws, bs, box)
    lo1, hi1, _ = refined_bounds(layered, x_lo, x_hi, lo, hi, alpha_steps=5, layer_budget=30.0, layers=8,
                                 deadline=time.perf_counter() + 120)
    with SpecWorkers(2) as workers:
        lo2, hi2, stats = refined_bounds(layered, x_lo, x_hi, lo, hi, alpha_steps=5, layer_budget=30.0, layers=8,
                                         deadline=time.perf_counter() + 120, workers=workers)
    assert stats["refine_domains"] > 0
    for (k, j), (low, high) in _finished_case(seed)[6].items():
        l, u = float(lo2[k][0, j]), float(hi2[k][0, j])
        assert l <= low + 1e-7 and u >= high - 1e-7
        assert abs(l - float(lo1[k][0, j])) <= 1e-5 and abs(u - float(hi1[k][0, j])) <= 1e-5


def test_a_lost_share_of_specs_tightens_nothing():
    from verifier.bab.parallel import merge
    from verifier.bab.search import BabOutcome
    out = merge([BabOutcome("proved", [1.0, 2.0], None, {"bab_domains": 4}, exhausted=True), None], [2, 2],
                lambda x: True)
    assert out.lower[0::2] == [1.0, 2.0] and out.lower[1::2] == [float("-inf")] * 2
    assert out.stats == {"bab_domains": 4} and not out.exhausted and out.status == "unknown"
    # A helper's candidate that the caller's check rejects proves nothing either.
    rejected = merge([BabOutcome("proved", [1.0], None, {}), BabOutcome("counterexample", [float("-inf")], np.zeros(2), {})],
                     [1, 1], lambda x: False)
    assert rejected.status == "unknown" and rejected.lower == [1.0, float("-inf")]
    confirmed = merge([BabOutcome("proved", [1.0], None, {}), BabOutcome("counterexample", [float("-inf")], np.ones(2), {})],
                      [1, 1], lambda x: True)
    assert confirmed.status == "counterexample" and confirmed.x[0] == 1.0
