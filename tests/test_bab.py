"""Bound propagation (alpha/beta-CROWN) and branch and bound against independent oracles:
enumeration of activation patterns on tiny deep networks, and dense sampling of split domains."""

import time

import numpy as np
import pytest
import torch

import verifier
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import assert_verdict_agrees, enumerate_min_slack
from verifier import Conjunction, InputRegion, Property, Status, VerifyOptions
from verifier.bab.crown import Relaxation, backward_bound, intermediate_bounds
from verifier.bab.layered import as_layered
from verifier.bab.search import BabSettings, branch_and_bound, domain_bytes
from verifier.bounds.interval import interval_bounds
from verifier.spec.ball import InputBox

SIZES = [3, 4, 3, 3, 2]  # three ReLU layers: 10 hidden neurons, 1,024 patterns to enumerate


def _case(seed: int):
    rng = np.random.default_rng(seed)
    ws, bs = random_mlp(rng, SIZES)
    centre = rng.uniform(0.2, 0.8, SIZES[0])
    eps = float(rng.uniform(0.1, 0.5))
    box = InputBox(np.clip(centre - eps, 0, 1), np.clip(centre + eps, 0, 1))
    n_rows = 1 + seed % 2
    conj = Conjunction(rng.normal(size=(n_rows, SIZES[-1])), rng.normal(size=n_rows) * 0.3)
    return ws, bs, box, conj


def _root_bounds(net, layered, box) -> tuple[list, list]:
    """Interval bounds of every ReLU layer's pre-activation, as the (1, n_k) tensors the search takes."""
    bounds = interval_bounds(net, box.lo, box.hi)
    return ([torch.as_tensor(bounds[p][0])[None] for p in layered.pre_nodes],
            [torch.as_tensor(bounds[p][1])[None] for p in layered.pre_nodes])


@pytest.mark.parametrize("seed", range(16))
def test_bab_verdicts_match_enumeration(seed):
    ws, bs, box, conj = _case(seed)
    expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
    net = verifier.load(mlp_onnx(ws, bs))
    prop = Property([InputRegion(box, [conj])], SIZES[0], SIZES[-1])
    # No attack and no LP: every verdict comes from bounds or branch and bound.
    options = VerifyOptions(bab="on", split="relu", attack_steps=0, attack_restarts=0, lp_tightening=False)
    r = verifier.check(net, prop, timeout=60, options=options)
    if expected > 1e-4:
        assert r.status == Status.ROBUST
    elif expected < -1e-4:
        assert r.status == Status.ADVERSARIAL
        assert conj.slack(net.forward(r.counterexample))[0] <= 0
    if r.status == Status.ROBUST:
        assert expected > 0
    assert r.margin_lower <= expected + 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_cut_short_bab_bound_is_below_the_minimum(seed):
    ws, bs, box, conj = _case(100 + seed)
    expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    lo, hi = _root_bounds(net, layered, box)
    out = branch_and_bound(layered, [layered.spec_rows(conj.C, conj.d)], torch.as_tensor(box.lo),
                           torch.as_tensor(box.hi), lo, hi, 1e-5, deadline=0.0,
                           is_counterexample=lambda x: False)
    assert out.lower[0] <= expected + 1e-9


def test_search_stops_soundly_when_its_memory_is_full():
    """A memory budget of two domains: every search that needs more stops, unproven, with a
    bound still below the enumerated minimum."""
    stopped = 0
    for seed in range(200, 212):
        ws, bs, box, conj = _case(seed)
        expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
        net = verifier.load(mlp_onnx(ws, bs))
        layered = as_layered(net)
        lo, hi = _root_bounds(net, layered, box)
        # Sized for the unpruned chain: dropped dead neurons only make a domain smaller, and
        # the per-domain overhead dominates, so the cap stays at about two domains.
        tiny = BabSettings(batch=1, max_memory=2 * domain_bytes(sum(l.numel() for l in lo), conj.C.shape[0]))
        out = branch_and_bound(layered, [layered.spec_rows(conj.C, conj.d)], torch.as_tensor(box.lo),
                               torch.as_tensor(box.hi), lo, hi, 1e-5, deadline=time.perf_counter() + 30,
                               is_counterexample=lambda x: False, settings=tiny)
        assert out.lower[0] <= expected + 1e-9
        if out.stats.get("bab_memory_full"):
            stopped += 1
            assert out.status == "unknown"
    assert stopped > 0  # the cap was reached at least once, so the check above ran


def test_search_stops_soundly_when_the_process_holds_too_much():
    """A limit on the whole process's resident memory (below what it holds already): the
    search stops after its root, unproven unless the root proves it, with a bound still below
    the enumerated minimum; the resident size read is a plausible one for this process."""
    from verifier.resources import resident_bytes

    held = resident_bytes()
    assert held is not None and 5e7 < held < 1e11  # torch alone holds more than 50 MB
    for seed in range(200, 206):
        ws, bs, box, conj = _case(seed)
        expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
        net = verifier.load(mlp_onnx(ws, bs))
        layered = as_layered(net)
        lo, hi = _root_bounds(net, layered, box)
        out = branch_and_bound(layered, [layered.spec_rows(conj.C, conj.d)], torch.as_tensor(box.lo),
                               torch.as_tensor(box.hi), lo, hi, 1e-5, deadline=time.perf_counter() + 30,
                               is_counterexample=lambda x: False, settings=BabSettings(batch=1, max_resident=1))
        assert out.lower[0] <= expected + 1e-9 and out.stats["bab_rounds"] == 0
        if out.status != "proved":
            assert out.stats.get("bab_memory_full") == 1


@pytest.mark.parametrize("seed", range(6))
def test_search_bound_never_falls_below_the_root_bound(seed):
    """However a search is cut short, its bound is at least the root's (the search with no room
    for a single domain after the root) and at most the enumerated minimum."""
    ws, bs, box, conj = _case(300 + seed)
    expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    lo, hi = _root_bounds(net, layered, box)
    args = ([layered.spec_rows(conj.C, conj.d)], torch.as_tensor(box.lo), torch.as_tensor(box.hi), lo, hi, 1e-5)
    root = branch_and_bound(layered, *args, deadline=time.perf_counter() + 30, is_counterexample=lambda x: False,
                            settings=BabSettings(max_memory=0))
    assert np.isfinite(root.lower[0]) and root.stats["bab_rounds"] == 0
    for budget in (1, 3, 6):
        settings = BabSettings(batch=1, max_memory=budget * domain_bytes(sum(l.numel() for l in lo), conj.C.shape[0]))
        out = branch_and_bound(layered, *args, deadline=time.perf_counter() + 30,
                               is_counterexample=lambda x: False, settings=settings)
        assert root.lower[0] - 1e-12 <= out.lower[0] <= expected + 1e-9


def test_search_entered_after_its_deadline_returns_at_once():
    """No time left: no problem is built (on a CNN that alone takes seconds) and nothing is
    claimed."""
    ws, bs, box, conj = _case(300)
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    lo, hi = _root_bounds(net, layered, box)
    built = []
    problem = layered.problem
    layered.problem = lambda *a: built.append(1) or problem(*a)
    out = branch_and_bound(layered, [layered.spec_rows(conj.C, conj.d)], torch.as_tensor(box.lo),
                           torch.as_tensor(box.hi), lo, hi, 1e-5, deadline=time.perf_counter() - 1,
                           is_counterexample=lambda x: False)
    assert out.status == "unknown" and out.lower == [-np.inf] and not built


@pytest.mark.parametrize("seed", range(4))
def test_search_whose_root_bound_uses_the_time_returns_the_root_bound(seed):
    """A root bound that ends past the deadline: its bounds are the answer (no branching after
    the deadline), the same as a search with no room for a domain after the root gives."""
    ws, bs, box, conj = _case(300 + seed)
    expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    lo, hi = _root_bounds(net, layered, box)
    args = ([layered.spec_rows(conj.C, conj.d)], torch.as_tensor(box.lo), torch.as_tensor(box.hi), lo, hi, 1e-5)
    deadline = time.perf_counter() + 0.5
    make = layered.problem
    after = []  # work done on the root's domains after the deadline (corner checks)

    def slow_problem(*a):
        problem = make(*a)
        bound = problem.bound

        def slow_bound(*b, **k):
            out = bound(*b, **k)
            time.sleep(max(0.0, deadline - time.perf_counter()) + 0.01)
            return out
        problem.bound = slow_bound
        slack = problem.slack
        problem.slack = lambda *b: after.append(1) or slack(*b)
        return problem

    layered.problem = slow_problem
    out = branch_and_bound(layered, *args, deadline=deadline, is_counterexample=lambda x: False,
                           settings=BabSettings(steps=0))
    assert out.stats["bab_rounds"] == 0 and not after
    assert out.lower[0] <= expected + 1e-9
    assert out.status == ("proved" if out.lower[0] > 1e-5 else "unknown")
    no_steps = branch_and_bound(layered.__class__(layered.weights, layered.biases, layered.pre_nodes), *args,
                                deadline=time.perf_counter() + 30, is_counterexample=lambda x: False,
                                settings=BabSettings(max_memory=0, steps=0))
    assert out.lower[0] == pytest.approx(no_steps.lower[0], abs=1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_any_slopes_and_multipliers_give_valid_bounds(seed):
    """Random alpha in [0,1], beta >= 0 and random splits: the bound never exceeds the value
    at any sampled input that satisfies the splits (the definition of a lower bound)."""
    rng = np.random.default_rng(200 + seed)
    ws, bs, box, conj = _case(200 + seed)
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    x_lo, x_hi = torch.as_tensor(box.lo), torch.as_tensor(box.hi)
    lo, hi = _root_bounds(net, layered, box)
    lo, hi = intermediate_bounds(layered, x_lo, x_hi, lo, hi, steps=5)
    rows, const = layered.spec_rows(conj.C, conj.d)
    xs = torch.as_tensor(rng.uniform(box.lo, box.hi, size=(20000, box.lo.size)))
    pre, h = [], xs
    for k in range(layered.depth):
        z = h @ layered.weights[k].T + layered.biases[k]
        pre.append(z)
        h = torch.relu(z)
    values = (h @ rows.T + const).max(1).values
    for _ in range(10):
        signs = [torch.as_tensor(rng.choice([-1, 0, 0, 1], size=l.shape[1])) for l in lo]
        keep = torch.ones(xs.shape[0], dtype=torch.bool)
        for z, s in zip(pre, signs):
            keep &= ((s < 0) & (z >= 0) | (s > 0) & (z <= 0) | (s == 0)).all(1)
        clamped_lo = [torch.where(s < 0, l.clamp(min=0), l) for l, s in zip(lo, signs)]
        clamped_hi = [torch.where(s > 0, u.clamp(max=0), u) for u, s in zip(hi, signs)]
        m = rows.shape[0]
        alphas = [torch.as_tensor(rng.uniform(0, 1, size=(1, m, l.shape[1]))) for l in lo]
        betas = [torch.as_tensor(rng.exponential(1.0, size=(1, m, l.shape[1]))) for l in lo]
        out = backward_bound(layered, layered.depth, rows[None], const[None], x_lo, x_hi,
                             Relaxation.of(clamped_lo, clamped_hi), alphas, betas,
                             [s.to(torch.float64)[None, None] for s in signs])
        if keep.any():
            assert float(out.value.max()) <= float(values[keep].min()) + 1e-9


def test_nan_slopes_prove_nothing():
    """Slopes that overflowed in float32 steps must give -inf, never a NaN that compares false."""
    ws, bs, box, conj = _case(300)
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    lo, hi = _root_bounds(net, layered, box)
    rows, const = layered.spec_rows(conj.C, conj.d)
    alphas = [torch.full((1, rows.shape[0], l.shape[1]), float("nan"), dtype=torch.float64) for l in lo]
    out = backward_bound(layered, layered.depth, rows[None], const[None], torch.as_tensor(box.lo),
                         torch.as_tensor(box.hi), Relaxation.of(lo, hi), alphas)
    assert torch.all(out.value == -torch.inf)


@pytest.mark.parametrize("field", ["bab", "bab_branching", "bab_rank", "disjunctions"])
def test_unknown_option_word_is_a_clear_error(field):
    with pytest.raises(verifier.InputError, match=field):
        VerifyOptions(**{field: "sometimes"})


def test_option_settings_from_text_take_the_field_type():
    """Benchmark scripts' name=value overrides: typed like the field, unknown names refused."""
    from verifier.errors import InputError
    from verifier.options import parse_setting

    assert parse_setting("bab_steps=4") == ("bab_steps", 4)  # unset default: an int
    assert parse_setting("bab_candidates=8") == ("bab_candidates", 8)
    for bad in (0, 2.5, True):
        with pytest.raises(InputError, match=f"bab_candidates={bad!r}"):
            VerifyOptions(bab_candidates=bad)
    assert parse_setting("symbolic=false") == ("symbolic", False)
    assert parse_setting("tolerance=1e-4") == ("tolerance", 1e-4)
    assert parse_setting("bab=off") == ("bab", "off")
    assert VerifyOptions(**dict([parse_setting("threads=2")])).threads == 2
    with pytest.raises(InputError, match="bab_stepz"):
        parse_setting("bab_stepz=4")
    with pytest.raises(InputError, match="threads='x'"):  # a typed field's bad value names the option
        parse_setting("threads=x")
    assert parse_setting("candidates=16", BabSettings) == ("candidates", 16)  # another dataclass's fields
    assert parse_setting("lr_alpha=0.05", BabSettings) == ("lr_alpha", 0.05)
    with pytest.raises(InputError, match="refine_budget='O.5'"):  # a mistyped number: a clear error
        VerifyOptions(**dict([parse_setting("refine_budget=O.5")]))
    with pytest.raises(InputError, match="refine_budget=1.5"):
        VerifyOptions(refine_budget=1.5)


def _one_layer_case(seed: int, nonnegative: bool):
    rng = np.random.default_rng(500 + seed)
    ws, bs = random_mlp(rng, [3, 8, 2])
    if nonnegative:
        ws[1] = np.abs(ws[1])
    centre = rng.uniform(0.3, 0.7, 3)
    box = InputBox(np.clip(centre - 0.3, 0, 1), np.clip(centre + 0.3, 0, 1))
    k = 1 + seed % 2
    C = np.abs(rng.normal(size=(k, 2))) if nonnegative else rng.normal(size=(k, 2))
    return ws, bs, box, Conjunction(C, rng.normal(size=k) * 0.3)


@pytest.mark.parametrize("seed", range(6))
def test_leaf_lp_is_exact_with_convex_last_layer_neurons_left_relaxed(seed):
    """Every row weighs every hidden neuron >= 0: no split is needed, and the leaf LP with
    y >= max(0, z) columns gives the exact minimum (enumeration) and a point attaining it."""
    from verifier.bab.leaf import leaf_bound

    ws, bs, box, conj = _one_layer_case(seed, nonnegative=True)
    expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    lo, hi = interval_bounds(net, box.lo, box.hi)[layered.pre_nodes[0]]
    assert ((lo < 0) & (hi > 0)).any()
    rows, const = layered.spec_rows(conj.C, conj.d)
    value, x = leaf_bound(layered, rows, const, torch.as_tensor(box.lo), torch.as_tensor(box.hi),
                          [torch.zeros(lo.size, dtype=torch.int8)], [torch.as_tensor(lo)], [torch.as_tensor(hi)],
                          10.0)
    assert expected - 1e-6 <= value <= expected + 1e-9
    assert conj.slack(net.forward(x))[0] <= expected + 1e-6
    # A row weighing an unsplit unstable neuron < 0: not a leaf, no bound.
    unstable = int(np.flatnonzero((lo < 0) & (hi > 0))[0])
    rows = rows.clone()
    rows[0, unstable] = -1.0
    value, _ = leaf_bound(layered, rows, const, torch.as_tensor(box.lo), torch.as_tensor(box.hi),
                          [torch.zeros(lo.size, dtype=torch.int8)], [torch.as_tensor(lo)], [torch.as_tensor(hi)],
                          10.0)
    assert value == -np.inf


@pytest.mark.parametrize("seed", range(10))
def test_one_hidden_layer_bab_matches_enumeration(seed):
    ws, bs, box, conj = _one_layer_case(seed, nonnegative=False)
    expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    lo, hi = interval_bounds(net, box.lo, box.hi)[layered.pre_nodes[0]]
    out = branch_and_bound(layered, [layered.spec_rows(conj.C, conj.d)], torch.as_tensor(box.lo),
                           torch.as_tensor(box.hi), [torch.as_tensor(lo)[None]], [torch.as_tensor(hi)[None]],
                           1e-5, deadline=time.perf_counter() + 60, is_counterexample=lambda x: True)
    if expected > 1e-4:
        assert out.status == "proved" and out.lower[0] <= expected + 1e-9
    elif expected < -1e-4:
        assert out.status == "counterexample" and conj.slack(net.forward(out.x))[0] <= 0


@pytest.mark.parametrize("seed", range(4))
def test_chain_without_dead_neurons_computes_the_same_outputs(seed):
    """Branch and bound drops neurons inactive over the whole box (upper bound <= 0): the pruned
    chain must give the network's outputs at every input of the box (onnx forward pass)."""
    rng = np.random.default_rng(500 + seed)
    ws, bs = random_mlp(rng, [6, 12, 12, 3])
    bs = [b - 1.0 if k < 2 else b for k, b in enumerate(bs)]  # push neurons towards dead
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    lo, hi = np.full(6, 0.2), np.full(6, 0.6)
    bounds = interval_bounds(net, lo, hi)
    keep = [torch.nonzero(torch.as_tensor(bounds[p][1]).reshape(-1) > 0).flatten() for p in layered.pre_nodes]
    assert sum(k.numel() for k in keep) < 24  # some neurons are dead
    keep = [k if k.numel() else torch.zeros(1, dtype=torch.long) for k in keep]
    pruned = layered.without(keep)
    xs = rng.uniform(lo, hi, size=(200, 6))
    expected = np.stack([net.forward(x) for x in xs])
    assert np.allclose(pruned.forward(torch.as_tensor(xs)).numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_bab_with_dead_neurons_matches_enumeration(seed):
    """Negative biases leave neurons inactive over the whole box, which the search drops from
    its chain: its proven bound must stay below the enumerated minimum and close on it."""
    ws, bs, box, conj = _case(600 + seed)
    bs = [b - 0.8 if k < len(bs) - 1 else b for k, b in enumerate(bs)]
    expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    lo, hi = _root_bounds(net, layered, box)
    assert any(bool((h <= 0).any()) for h in hi)  # the case has dead neurons
    rows, const = layered.spec_rows(conj.C, conj.d)
    found = []
    out = branch_and_bound(layered, [(rows, const - expected)], torch.as_tensor(box.lo), torch.as_tensor(box.hi),
                           lo, hi, 1e-6, deadline=time.perf_counter() + 30,
                           is_counterexample=lambda x: found.append(x) or True)
    # The slack shifted by the true minimum has minimum 0: never proved above the tolerance,
    # and any point found must really reach it.
    assert out.status != "proved" and out.lower[0] <= 1e-9
    for x in found:
        assert conj.slack(net.forward(x))[0] - expected <= 1e-6
    shifted = branch_and_bound(layered, [(rows, const - expected + 1e-3)], torch.as_tensor(box.lo),
                               torch.as_tensor(box.hi), lo, hi, 1e-6, deadline=time.perf_counter() + 30,
                               is_counterexample=lambda x: False)
    assert shifted.status == "proved"  # 1e-3 above the minimum: provable, and proved


def test_fixed_split_in_a_repeated_relaxation_equals_clamped_bounds():
    """Trial branching patches a split into a repeated relaxation; it must equal the relaxation
    of the clamped bounds (lower 0 for the active side, upper 0 for the inactive one)."""
    lower = [torch.tensor([[-1.0, -2.0, 0.5]], dtype=torch.float64)]
    upper = [torch.tensor([[2.0, 1.0, 3.0]], dtype=torch.float64)]
    relax = Relaxation.of(lower, upper, torch.float32).repeated(2)
    relax.fix(0, torch.tensor([0]), torch.tensor([1]), active=True)
    relax.fix(0, torch.tensor([1]), torch.tensor([1]), active=False)
    act_lo, inact_hi = lower[0].clone(), upper[0].clone()
    act_lo[0, 1], inact_hi[0, 1] = 0.0, 0.0
    want = Relaxation.of([torch.cat([act_lo, lower[0]])], [torch.cat([upper[0], inact_hi])], torch.float32)
    for got, exp in [(relax.up_slope, want.up_slope), (relax.up_offset, want.up_offset),
                     (relax.fixed_slope, want.fixed_slope), (relax.unstable, want.unstable)]:
        assert torch.equal(got[0], exp[0])


def test_rigorous_bound_refuses_a_float32_relaxation():
    """Only float64 relaxations carry the data for the rounding slack; a bound that counts must
    never be computed from a float32 one."""
    ws, bs, box, conj = _case(700)
    layered = as_layered(verifier.load(mlp_onnx(ws, bs)))
    lo, hi = _root_bounds(verifier.load(mlp_onnx(ws, bs)), layered, box)
    rows, const = layered.spec_rows(conj.C, conj.d)
    alphas = [torch.zeros((1, rows.shape[0], l.shape[1]), dtype=torch.float64) for l in lo]
    with pytest.raises(ValueError, match="float64 relaxation"):
        backward_bound(layered, layered.depth, rows[None], const[None], torch.as_tensor(box.lo),
                       torch.as_tensor(box.hi), Relaxation.of(lo, hi, torch.float32), alphas)


def test_leaf_lp_infeasible_only_with_a_checked_certificate():
    """An empty activation pattern closes its domain (+inf, from a verified Farkas ray); a
    pattern that holds points does not, and its bound is the exact minimum."""
    from verifier.bab.layered import Layered
    from verifier.bab.leaf import leaf_bound

    # z0 = x, z1 = -x - 0.5 over x in [-1, 1]: both active needs x >= 0 and x <= -0.5.
    net = Layered([torch.tensor([[1.0], [-1.0]], dtype=torch.float64), torch.tensor([[1.0, 1.0]], dtype=torch.float64)],
                  [torch.tensor([0.0, -0.5], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)], ["z"])
    x_lo, x_hi = torch.tensor([-1.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    rows, const = torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    both_active = [torch.tensor([-1, -1], dtype=torch.int8)]
    lower, upper = [torch.tensor([0.0, 0.0], dtype=torch.float64)], [torch.tensor([1.0, 0.5], dtype=torch.float64)]
    value, x = leaf_bound(net, rows, const, x_lo, x_hi, both_active, lower, upper, 10.0)
    assert value == np.inf and x is None
    # z0 active, z1 inactive: x in [0, 1], output h0 + h1 = x, minimum 0 at x = 0.
    mixed = [torch.tensor([-1, 1], dtype=torch.int8)]
    lower, upper = [torch.tensor([0.0, -1.5], dtype=torch.float64)], [torch.tensor([1.0, 0.0], dtype=torch.float64)]
    value, x = leaf_bound(net, rows, const, x_lo, x_hi, mixed, lower, upper, 10.0)
    assert -1e-5 <= value <= 1e-9 and abs(x[0]) <= 1e-5


def test_infeasibility_certificate_is_checked_not_trusted():
    """A Farkas ray closes a problem only if it really proves it empty, whatever its sign and
    scale; random rays never prove a feasible problem empty."""
    import scipy.sparse as sp

    from solvers.base import MilpProblem
    from verifier.bounds.lp import certifies_infeasible

    def problem(row_lo: float) -> MilpProblem:  # x in [0, 1] and x + 0 y >= row_lo, y in [-1, 1]
        return MilpProblem(np.zeros(2), sp.csc_matrix([[1.0, 0.0]]), np.array([row_lo]), np.array([np.inf]),
                           np.array([0.0, -1.0]), np.array([1.0, 1.0]), np.zeros(2, bool))

    empty, holding = problem(2.0), problem(0.5)
    assert certifies_infeasible(empty, np.array([1.0]))
    assert certifies_infeasible(empty, np.array([-1e-14]))  # HiGHS' sign convention, tiny scale
    rng = np.random.default_rng(0)
    assert not any(certifies_infeasible(holding, rng.normal(size=1)) for _ in range(50))
    for bad in (None, np.zeros(1), np.array([np.nan]), np.ones(2)):
        assert not certifies_infeasible(empty, bad)


def test_leaf_lp_called_infeasible_without_a_certificate_proves_nothing(monkeypatch):
    """If the solver says "infeasible" on a domain that holds points, the leaf stays open."""
    from solvers.base import SolveResult, SolveStatus
    from solvers.highs import HighsSolver
    from verifier.bab.layered import Layered
    from verifier.bab.leaf import leaf_bound

    monkeypatch.setattr(HighsSolver, "solve", lambda self, options: SolveResult(SolveStatus.INFEASIBLE, None, np.inf, np.inf))
    monkeypatch.setattr(HighsSolver, "dual_ray", lambda self: np.random.default_rng(1).normal(size=self.problem.num_rows))
    net = Layered([torch.tensor([[1.0], [-1.0]], dtype=torch.float64), torch.tensor([[1.0, 1.0]], dtype=torch.float64)],
                  [torch.tensor([0.0, -0.5], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)], ["z"])
    value, x = leaf_bound(net, torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                          torch.tensor([-1.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                          [torch.tensor([-1, 1], dtype=torch.int8)], [torch.tensor([0.0, -1.5], dtype=torch.float64)],
                          [torch.tensor([1.0, 0.0], dtype=torch.float64)], 10.0)
    assert value == -np.inf and x is None


def test_deep_chains_skip_the_whole_network_lp_only_when_searched_by_bab():
    """On 3+ ReLU layers the search replaces the LP bounds (plan._lp_bounds); with the MIP
    path they still run. Verdicts agree with enumeration either way."""
    reached = {"on": 0, "off": 0}
    for seed in range(16):
        ws, bs, box, conj = _case(seed)
        expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
        net = verifier.load(mlp_onnx(ws, bs))
        prop = Property([InputRegion(box, [conj])], SIZES[0], SIZES[-1])
        for bab in ("on", "off"):
            options = VerifyOptions(bab=bab, split="relu", attack_steps=0, attack_restarts=0, lp_tightening=False)
            r = verifier.check(net, prop, timeout=60, options=options)
            if r.status == Status.ROBUST:
                assert expected > 0
            if r.status == Status.ADVERSARIAL:
                assert conj.slack(net.forward(r.counterexample))[0] <= 0
            past_bounds = r.decided_by not in ("bounds", "clean", "attack")
            if past_bounds:
                assert ("time_lp_bounds" in r.stats) == (bab == "off")
                reached[bab] += 1
    assert min(reached.values()) > 0  # cases got past the bounds both ways: the rule was exercised


def robustness_case(seed: int):
    """A small MLP, a point, a radius and its predicted label; the other labels, and the exact
    minimum of the worst margin by enumeration: (net, x, eps, label, others, expected)."""
    rng = np.random.default_rng(100 + seed)
    sizes = [3, 5, 5, 4]
    ws, bs = random_mlp(rng, sizes)
    net = verifier.load(mlp_onnx(ws, bs, input_shape=[1, 3]))
    x = rng.uniform(0.2, 0.8, 3)
    eps = float(rng.uniform(0.05, 0.3))
    label = int(np.argmax(net.forward(x)))
    box_lo, box_hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    others = [j for j in range(sizes[-1]) if j != label]
    conjunctions = [((np.eye(sizes[-1])[label] - np.eye(sizes[-1])[j])[None], np.zeros(1)) for j in others]
    return net, x, eps, label, others, enumerate_min_slack(ws, bs, box_lo, box_hi, conjunctions)


@pytest.mark.parametrize("seed", range(6))
def test_disjuncts_shared_over_two_processes_match_enumeration(seed):
    """Robustness (one disjunct per other label) with the searches' specs dealt out over two
    processes (option `processes`, bab/parallel.py), no attack: verdicts and bounds agree with
    enumeration, and a counterexample holds on the real network."""
    net, x, eps, label, others, expected = robustness_case(seed)
    options = VerifyOptions(bab="on", split="relu", attack_steps=0, attack_restarts=0, processes=2)
    r = verifier.verify(net, x, eps, label=label, timeout=60, options=options)
    assert_verdict_agrees(r, expected)
    if r.status == Status.ADVERSARIAL:
        y = net.forward(r.counterexample)
        assert np.argmax(y) != label or y.max() == y[others].max()
