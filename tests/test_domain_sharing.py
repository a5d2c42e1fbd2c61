"""One search's domains shared over processes (bab/parallel.py, SpecWorkers._share_domains): a
property with fewer open disjuncts than processes is searched here until enough domains are
open, then dealt out. Verdicts and bounds against enumeration of activation patterns."""

import math
import time

import numpy as np
import torch

import verifier
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import enumerate_min_slack
from verifier import Conjunction
from verifier.bab.layered import as_layered
from verifier.bab.parallel import SpecWorkers, merge_domains
from verifier.bab.search import BabOutcome, BabSettings, Domain, branch_and_bound
from verifier.bounds.interval import interval_bounds
from verifier.spec.ball import InputBox

SIZES = [3, 4, 3, 3, 2]  # three ReLU layers: 10 hidden neurons, 1,024 patterns to enumerate


def _case(seed: int):
    """A small deep MLP as the search's chain, its box, one spec and its root bounds, and the
    exact minimum of the spec's slack. The spec's constant puts that minimum 0.01 above 0 (even
    seeds) or below (odd ones), so that the root bounds decide nothing and the search runs."""
    rng = np.random.default_rng(300 + seed)
    ws, bs = random_mlp(rng, SIZES)
    centre = rng.uniform(0.2, 0.8, SIZES[0])
    eps = float(rng.uniform(1.0, 2.0))  # a wide box: many unstable neurons
    box = InputBox(centre - eps, centre + eps)
    C = rng.normal(size=(1, SIZES[-1]))
    lowest = enumerate_min_slack(ws, bs, box.lo, box.hi, [(C, np.zeros(1))])
    conj = Conjunction(C, np.array([lowest - (0.01 if seed % 2 == 0 else -0.01)]))
    net = verifier.load(mlp_onnx(ws, bs))
    layered = as_layered(net)
    bounds = interval_bounds(net, box.lo, box.hi)
    lower = [torch.as_tensor(bounds[p][0])[None] for p in layered.pre_nodes]
    upper = [torch.as_tensor(bounds[p][1])[None] for p in layered.pre_nodes]
    expected = enumerate_min_slack(ws, bs, box.lo, box.hi, [(conj.C, conj.d)])
    return net, layered, box, conj, lower, upper, expected


def test_one_spec_shared_by_domains_over_two_processes_matches_enumeration():
    """Rounds of one domain, so the search hands off after a few: every verdict agrees with
    enumeration, every bound lies below the exact minimum, a counterexample holds on the
    network, and most cases did share their domains."""
    handed = 0
    with SpecWorkers(2) as workers:
        for seed in range(10):
            net, layered, box, conj, lower, upper, expected = _case(seed)

            def check(x, net=net, conj=conj) -> bool:
                return bool(conj.slack(net.forward(np.asarray(x)))[0] <= 0)

            out = workers.search(layered, [layered.spec_rows(conj.C, conj.d)], torch.as_tensor(box.lo),
                                 torch.as_tensor(box.hi), lower, upper, 1e-5, time.perf_counter() + 60, check,
                                 BabSettings(batch=1))
            handed += out.stats.get("bab_handed_off", 0) > 0
            assert out.lower[0] <= expected + 1e-9
            if expected > 1e-4:
                assert out.status == "proved", (seed, expected, out)
            elif expected < -1e-4:
                assert out.status == "counterexample", (seed, expected, out)
            if out.status == "counterexample":
                assert check(out.x)
            if out.status == "proved":
                assert expected > 0
    assert handed >= 5


def test_handed_off_domains_continued_in_one_process_reach_the_same_verdict():
    """A search stopped at `handoff` domains and another started from them (`start`) together
    prove exactly what enumeration says, with bounds below the exact minimum throughout; one
    started past its deadline reports its domains' bounds."""
    continued = 0
    for seed in range(6):
        net, layered, box, conj, lower, upper, expected = _case(seed)
        args = (layered, [layered.spec_rows(conj.C, conj.d)], torch.as_tensor(box.lo), torch.as_tensor(box.hi),
                lower, upper, 1e-5)
        check = lambda x, net=net, conj=conj: bool(conj.slack(net.forward(np.asarray(x)))[0] <= 0)  # noqa: E731
        first = branch_and_bound(*args, time.perf_counter() + 60, check, BabSettings(batch=1), handoff=2)
        assert first.lower[0] <= expected + 1e-9 or first.open
        if not first.open:
            continue
        continued += 1
        assert len(first.open) >= 2 and first.status == "unknown"
        assert [d.bound for d in first.open] == sorted(d.bound for d in first.open)
        assert min(d.bound for d in first.open) <= expected + 1e-9
        late = branch_and_bound(*args, 0.0, check, BabSettings(batch=1), start=first.open)
        assert late.status == "unknown" and late.lower[0] == min(d.bound for d in first.open)
        rest = branch_and_bound(*args, time.perf_counter() + 60, check, BabSettings(batch=1), start=first.open)
        assert min(first.lower[0], rest.lower[0]) <= expected + 1e-9
        if expected > 1e-4:
            assert rest.status == "proved"
        elif expected < -1e-4:
            assert rest.status == "counterexample" and check(rest.x)
    assert continued >= 3


def _domain(spec: int, bound: float) -> Domain:
    return Domain(spec, torch.zeros(1, dtype=torch.int8), torch.zeros((2, 1, 1), dtype=torch.float16), (0, 0), bound)


def test_a_lost_deal_proves_nothing_below_its_domains():
    """merge_domains: the least bound over the handing search and every share; a lost share,
    or one stopped by a candidate the caller's check rejects, contributes its dealt domains'
    bounds and proves nothing; a helper's candidate counts only if the check confirms it."""
    first = BabOutcome("unknown", [math.inf, 0.5], None, {"bab_domains": 3}, exhausted=True,
                       open=[_domain(0, -1.0), _domain(1, -0.5)])
    deals = [[_domain(0, -1.0)], [_domain(1, -0.5)]]
    both = merge_domains(first, [BabOutcome("proved", [2.0, math.inf], None, {"bab_domains": 4}, exhausted=True),
                                 BabOutcome("proved", [math.inf, 0.7], None, {"bab_domains": 2}, exhausted=True)],
                         deals, lambda x: True)
    assert both.status == "proved" and both.lower == [2.0, 0.5] and both.exhausted
    assert both.stats["bab_domains"] == 9
    lost = merge_domains(first, [BabOutcome("proved", [2.0, math.inf], None, {}), None], deals, lambda x: True)
    assert lost.status == "unknown" and lost.lower == [2.0, -0.5] and not lost.exhausted
    rejected = merge_domains(first, [BabOutcome("proved", [2.0, math.inf], None, {}),
                                     BabOutcome("counterexample", [-math.inf] * 2, np.zeros(3), {})], deals,
                             lambda x: False)
    assert rejected.status == "unknown" and rejected.lower == [2.0, -0.5]
    confirmed = merge_domains(first, [BabOutcome("proved", [2.0, math.inf], None, {}),
                                      BabOutcome("counterexample", [-math.inf] * 2, np.ones(3), {})], deals,
                              lambda x: True)
    assert confirmed.status == "counterexample" and confirmed.x[0] == 1.0
    # A handing search that left an open leaf proves nothing whatever the shares say.
    leafy = BabOutcome("unknown", [math.inf, 0.5], None, {"bab_leaves_open": 1}, open=first.open)
    assert merge_domains(leafy, [BabOutcome("proved", [2.0, math.inf], None, {}),
                                 BabOutcome("proved", [math.inf, 0.7], None, {})], deals,
                         lambda x: True).status == "unknown"


def test_a_search_stopped_by_memory_hands_nothing_off():
    """A search that stops before reaching `handoff` (here: its queue is full at once) keeps
    its domains: their least bound is its answer, finite and below the exact minimum."""
    stopped = 0
    for seed in range(6):
        net, layered, box, conj, lower, upper, expected = _case(seed)
        out = branch_and_bound(layered, [layered.spec_rows(conj.C, conj.d)], torch.as_tensor(box.lo),
                               torch.as_tensor(box.hi), lower, upper, 1e-5, time.perf_counter() + 60,
                               lambda x: False, BabSettings(batch=1, max_memory=1), handoff=10)
        if out.stats.get("bab_memory_full"):
            stopped += 1
            assert out.status == "unknown" and not out.open
            assert -math.inf < out.lower[0] <= expected + 1e-9
    assert stopped >= 3
