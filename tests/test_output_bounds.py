"""Layer bounds under a disjunct's negation (bab/output_bounds.py) against exact ranges over
that set, by enumeration; and verdicts of the search that uses them against enumeration."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

import verifier
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import enumerate_constrained_ranges, enumerate_min_slack
from verifier import Property, Status, VerifyOptions
from verifier.bab.crown import intermediate_bounds
from verifier.bab.layered import as_layered
from verifier.bab.output_bounds import constrained_bounds, crossed
from verifier.bounds.interval import interval_bounds
from verifier.spec.ball import InputBox
from verifier.spec.property import Conjunction, InputRegion

SIZES = [2, 3, 3, 3, 2]  # three ReLU layers, 512 patterns to enumerate
TOLERANCE = 1e-5


def _case(seed: int, share: float):
    """A random net, box and one-row disjunct whose negation holds on about `share` of the box
    (its offset is that quantile of the row's values at random points)."""
    rng = np.random.default_rng(seed)
    ws, bs = random_mlp(rng, SIZES)
    centre = rng.uniform(0.3, 0.7, SIZES[0])
    eps = float(rng.uniform(0.2, 0.4))
    box = InputBox(np.clip(centre - eps, 0, 1), np.clip(centre + eps, 0, 1))
    row = rng.normal(size=(1, SIZES[-1]))
    net = verifier.load(mlp_onnx(ws, bs))
    points = rng.uniform(box.lo, box.hi, size=(4000, SIZES[0]))
    values = (net.forward(points) @ row.T).ravel()
    return ws, bs, box, Conjunction(row, np.array([np.quantile(values, share)])), net


def _plain_bounds(net, layered, box):
    bounds = interval_bounds(net, box.lo, box.hi)
    lo = [torch.as_tensor(bounds[p][0])[None] for p in layered.pre_nodes]
    hi = [torch.as_tensor(bounds[p][1])[None] for p in layered.pre_nodes]
    return intermediate_bounds(layered, torch.as_tensor(box.lo), torch.as_tensor(box.hi), lo, hi, 10)


@lru_cache(maxsize=None)
def _constrained_case(seed: int):
    ws, bs, box, conj, net = _case(seed, share=0.1)
    layered = as_layered(net)
    lo, hi = _plain_bounds(net, layered, box)
    rows, const = layered.spec_rows(conj.C, conj.d)
    # U = {slack <= TOLERANCE}; the oracle's set is {C y - d <= TOLERANCE}.
    exact = enumerate_constrained_ranges(ws, bs, box.lo, box.hi, conj.C, conj.d + TOLERANCE)
    new_lo, new_hi = constrained_bounds(layered, rows, const, TOLERANCE, torch.as_tensor(box.lo),
                                        torch.as_tensor(box.hi), lo, hi, layers=3, rounds=2)
    return lo, hi, new_lo, new_hi, exact


@pytest.mark.parametrize("seed", range(8))
def test_constrained_bounds_hold_on_the_disjuncts_negation(seed):
    lo, hi, new_lo, new_hi, exact = _constrained_case(seed)
    assert exact  # the case is not vacuous: its negation is a nonempty part of the box
    assert not crossed(new_lo, new_hi)
    for (k, j), (low, high) in exact.items():
        assert float(new_lo[k][0, j]) <= low + 1e-7 and float(new_hi[k][0, j]) >= high - 1e-7  # sound
        assert float(new_lo[k][0, j]) >= float(lo[k][0, j]) and float(new_hi[k][0, j]) <= float(hi[k][0, j])


def test_constrained_bounds_are_tighter_than_plain_ones():
    """Over the seeds, some bounds move by the constraint (else the tests above prove nothing)."""
    moved = 0
    for seed in range(8):
        lo, hi, new_lo, new_hi, _ = _constrained_case(seed)
        for k in range(len(lo)):
            moved += int((new_lo[k] > lo[k] + 1e-3).sum()) + int((new_hi[k] < hi[k] - 1e-3).sum())
    assert moved >= 5


def test_empty_negation_crosses_or_proves():
    """A disjunct that holds on the whole box by a wide margin: its negation is empty, and the
    constrained bounds of the last layer come out crossed (or prove the disjunct outright)."""
    ws, bs, box, conj, net = _case(3, share=0.0)
    expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d - 1.0)])
    assert expected > 0.5
    layered = as_layered(net)
    lo, hi = _plain_bounds(net, layered, box)
    rows, const = layered.spec_rows(conj.C, conj.d - 1.0)
    new_lo, new_hi = constrained_bounds(layered, rows, const, TOLERANCE, torch.as_tensor(box.lo),
                                        torch.as_tensor(box.hi), lo, hi, layers=3, rounds=2)
    assert not enumerate_constrained_ranges(ws, bs, box.lo, box.hi, conj.C, conj.d - 1.0 + TOLERANCE)
    assert crossed(new_lo, new_hi) or all(bool((u <= 0).all()) or bool((l >= 0).all())
                                          for l, u in zip(new_lo, new_hi))


@pytest.mark.parametrize("seed", range(12))
def test_search_with_constrained_bounds_matches_enumeration(seed):
    """No probe and no refinement: the final search runs on each disjunct's constrained bounds."""
    rng = np.random.default_rng(500 + seed)
    ws, bs = random_mlp(rng, [3, 4, 3, 3, 3])
    centre = rng.uniform(0.2, 0.8, 3)
    eps = float(rng.uniform(0.1, 0.4))
    box = InputBox(np.clip(centre - eps, 0, 1), np.clip(centre + eps, 0, 1))
    conjs = [Conjunction(rng.normal(size=(1 + (seed + i) % 2, 3)), rng.normal(size=1 + (seed + i) % 2) * 0.3)
             for i in range(2)]
    expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(c.C, c.d) for c in conjs])
    net = verifier.load(mlp_onnx(ws, bs))
    prop = Property([InputRegion(box, conjs)], 3, 3)
    options = VerifyOptions(bab="on", attack_steps=0, attack_restarts=0, lp_tightening=False, bab_probe=0.0,
                            refine_budget=0.0, output_bounds="on", output_bound_layers=3)
    r = verifier.check(net, prop, timeout=60, options=options)
    if expected > 1e-4:
        assert r.status == Status.ROBUST
    elif expected < -1e-4:
        assert r.status == Status.ADVERSARIAL
    if r.status == Status.ROBUST:
        assert expected > 0
    assert r.margin_lower <= expected + 1e-9
