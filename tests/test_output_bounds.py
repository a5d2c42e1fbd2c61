"""Layer bounds under a disjunct's negation (bab/output_bounds.py) against exact ranges over
that set, by enumeration; and verdicts of the search that uses them against enumeration."""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
import pytest
import torch

import verifier
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import assert_verdict_agrees, enumerate_constrained_ranges, enumerate_min_slack
from verifier import Property, VerifyOptions
from verifier.bab.crown import Relaxation, backward_bound, intermediate_bounds, optimise_alpha
from verifier.bab.layered import as_layered
from verifier.bab.output_bounds import constrained_bounds, crossed
from verifier.bab.search import BabSettings, branch_and_bound
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


def test_constrained_bounds_cut_into_the_unconstrained_exact_range():
    """Over the seeds, some bounds lie strictly inside the neuron's exact range over the whole
    box: no bound valid on the whole box can, so the constraint does the work."""
    inside = 0
    for seed in range(8):
        ws, bs, box, conj, _ = _case(seed, share=0.1)
        whole = enumerate_constrained_ranges(ws, bs, box.lo, box.hi, conj.C, conj.d + 1e9)
        _, _, new_lo, new_hi, _ = _constrained_case(seed)
        for (k, j), (low, high) in whole.items():
            inside += (float(new_lo[k][0, j]) > low + 1e-3) + (float(new_hi[k][0, j]) < high - 1e-3)
    assert inside >= 5


def _shifted(seed: int, least: float):
    """A case whose disjunct's least slack over the box is exactly `least` (enumerated)."""
    ws, bs, box, conj, net = _case(seed, share=0.1)
    true_min = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
    conj = Conjunction(conj.C, conj.d + true_min - least)
    layered = as_layered(net)
    lo, hi = _plain_bounds(net, layered, box)
    rows, const = layered.spec_rows(conj.C, conj.d)
    x_lo, x_hi = torch.as_tensor(box.lo), torch.as_tensor(box.hi)
    plain = float(optimise_alpha(layered, layered.depth, rows[None], const[None], x_lo, x_hi, lo, hi, 20).max())
    new_lo, new_hi = constrained_bounds(layered, rows, const, TOLERANCE, x_lo, x_hi, lo, hi, layers=3, rounds=2)
    proved = crossed(new_lo, new_hi) or float(
        optimise_alpha(layered, layered.depth, rows[None], const[None], x_lo, x_hi, new_lo, new_hi, 20).max()) > TOLERANCE
    return plain, proved


@pytest.mark.parametrize("seed", range(6))
def test_a_disjunct_just_inside_the_tolerance_is_not_proven(seed):
    """Least slack tol/2: U = {slack <= tol} holds the minimiser, so the bounds must not cross
    and must not prove the disjunct (a tolerance shift with the wrong sign would empty U)."""
    _, proved = _shifted(seed, TOLERANCE / 2)
    assert not proved


@pytest.mark.parametrize("seed", range(4))
def test_a_disjunct_just_outside_the_tolerance_is_proven(seed):
    """Least slack 0.02 > tol: U is empty, and the constrained path proves the disjunct (on these
    small nets plain alpha-CROWN does too; with the case above this brackets the tolerance)."""
    _, proved = _shifted(seed, 0.02)
    assert proved


def test_inject_alone_is_the_plain_bound_of_the_neuron():
    """backward_bound with zero rows and z_k injected equals the bound of z_k's own rows."""
    ws, bs, box, _, net = _case(0, share=0.1)
    layered = as_layered(net)
    lo, hi = _plain_bounds(net, layered, box)
    x_lo, x_hi = torch.as_tensor(box.lo), torch.as_tensor(box.hi)
    k, n = 2, SIZES[3]
    relax = Relaxation.of(lo, hi)
    alphas = [torch.rand(1, n, SIZES[j + 1], dtype=torch.float64) for j in range(layered.depth)]
    zero_rows = torch.zeros(1, n, SIZES[-2], dtype=torch.float64)
    inject = torch.eye(n, dtype=torch.float64)[None]
    via_inject = backward_bound(layered, layered.depth, zero_rows, torch.zeros(1, n, dtype=torch.float64),
                                x_lo, x_hi, relax, alphas, rigorous=False, inject=(k, inject)).value
    direct = backward_bound(layered, k, layered.weights[k][None], layered.biases[k][None], x_lo, x_hi, relax,
                            alphas[:k], rigorous=False).value
    assert torch.allclose(via_inject, direct, atol=1e-12)


def _claim(value: float) -> float:
    """What RunState.prove_constrained records for a bound made with constrained bounds."""
    from verifier.search.run_state import RunState

    run = RunState(None, None, None, VerifyOptions(tolerance=TOLERANCE), 0.0, np.full(1, -np.inf), np.zeros(1))
    run.prove_constrained(0, value)
    return float(run.lower[0])


def test_a_constrained_bound_proves_at_most_just_above_the_tolerance():
    assert _claim(5.0) == np.nextafter(TOLERANCE, np.inf) and _claim(-0.5) == -0.5
    assert _claim(float("nan")) == -np.inf and _claim(TOLERANCE) == TOLERANCE


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_search_keeps_each_specs_own_bounds(order):
    """Two disjuncts, each searched with bounds valid only where it is unproven, given in either
    order: every result is a valid claim about its own disjunct (enumerated)."""
    for seed in range(4):
        ws, bs, box, conj, net = _case(20 + seed, share=0.1)
        other = Conjunction(-conj.C, -conj.d)  # holds where the first is violated, and vice versa
        layered = as_layered(net)
        lo, hi = _plain_bounds(net, layered, box)
        x_lo, x_hi = torch.as_tensor(box.lo), torch.as_tensor(box.hi)
        conjs = [conj, other]
        specs, lows, highs = [], [], []
        for c in (conjs[i] for i in order):
            rows, const = layered.spec_rows(c.C, c.d)
            d_lo, d_hi = constrained_bounds(layered, rows, const, TOLERANCE, x_lo, x_hi, lo, hi, layers=3, rounds=2)
            specs.append((rows, const))
            lows.append(d_lo)
            highs.append(d_hi)
        per_spec_lo = [torch.cat([l[k] for l in lows]) for k in range(layered.depth)]
        per_spec_hi = [torch.cat([h[k] for h in highs]) for k in range(layered.depth)]
        out = branch_and_bound(layered, specs, x_lo, x_hi, per_spec_lo, per_spec_hi, TOLERANCE,
                               deadline=time.perf_counter() + 5, is_counterexample=lambda x: False,
                               settings=BabSettings(on_witness="drop"))
        for position, i in enumerate(order):
            true_min = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conjs[i].C, conjs[i].d)])
            claim = _claim(out.lower[position])
            assert claim <= true_min + 1e-9


def test_search_with_constrained_bounds_matches_enumeration():
    """With output bounds forced on (no probe, no refinement, plain CROWN before them), every
    verdict matches enumeration. On nets this small the earlier stages decide most cases, so
    the constrained bounds and the search on them are covered by the tests above."""
    for seed in range(12):
        rng = np.random.default_rng(500 + seed)
        ws, bs = random_mlp(rng, [3, 4, 3, 3, 3])
        centre = rng.uniform(0.2, 0.8, 3)
        eps = float(rng.uniform(0.1, 0.4))
        box = InputBox(np.clip(centre - eps, 0, 1), np.clip(centre + eps, 0, 1))
        conjs = [Conjunction(rng.normal(size=(1 + (seed + i) % 2, 3)), rng.normal(size=1 + (seed + i) % 2) * 0.3)
                 for i in range(2)]
        # Shift each disjunct to a least slack of +-0.03 (all rows alike, so the max moves with
        # them): near 0, so that interval bounds and the box centre rarely decide it.
        targets = [0.03, -0.03 if seed % 3 == 0 else 0.03]
        conjs = [Conjunction(c.C, c.d + enumerate_min_slack(ws, bs, box.lo, box.hi, [(c.C, c.d)]) - t)
                 for c, t in zip(conjs, targets)]
        expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(c.C, c.d) for c in conjs])
        net = verifier.load(mlp_onnx(ws, bs))
        prop = Property([InputRegion(box, conjs)], 3, 3)
        options = VerifyOptions(bab="on", split="relu", attack_steps=0, attack_restarts=0, lp_tightening=False, bab_probe=0.0,
                                refine_budget=0.0, output_bounds="on", output_bound_layers=3, alpha_steps=0, bab_steps=0)
        r = verifier.check(net, prop, timeout=60, options=options)
        assert_verdict_agrees(r, expected)
