"""Two solvers, one answer: the native HiGHS backend and CBC through PuLP agree on the optimum of
the same verification MILPs, on LP relaxations (with safe bounds from either's duals), on the
verdicts and exact margins of tiny networks, and on a minimum distortion; and the PuLP backend
never claims more than its solver proved (a time-limited CBC run is not "optimal")."""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import verifier
from solvers import SOLVERS, HighsSolver, MilpProblem, SolveOptions, SolveStatus, check_solver, make_solver
from solvers.pulp_solver import PulpSolver, installed
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import enumerate_min_distortion, enumerate_min_margin
from verifier import InputError, Status, VerifyOptions
from verifier.bounds.interval import interval_bounds
from verifier.bounds.lp import safe_lower_bound
from verifier.distortion.goal import make_goal
from verifier.encode.network import encode_network

PULP_SOLVERS = [s for s in ("cbc", "pulp-highs") if installed(s) is not None]


def _tiny_net(seed: int, sizes: list[int]):
    rng = np.random.default_rng(seed)
    ws, bs = random_mlp(rng, sizes)
    return ws, bs, verifier.load(mlp_onnx(ws, bs)), rng.uniform(0.2, 0.8, sizes[0])


def _milp(seed: int, kind: str):
    """A verification MILP of a random tiny MLP over an L-inf ball: minimise one margin row
    (`linear_objective`) or the max over the other classes (`with_max_objective`, last column)."""
    sizes = [4, 8, 8, 3] if seed % 2 else [3, 10, 4]
    ws, bs, net, x = _tiny_net(500 + seed, sizes)
    lo, hi = np.clip(x - 0.3, 0, 1), np.clip(x + 0.3, 0, 1)
    enc = encode_network(net, interval_bounds(net, lo, hi))
    label, n_out = seed % sizes[-1], sizes[-1]
    if kind == "margin":
        c, _ = enc.linear_objective(net.output_node, np.eye(n_out)[label] - np.eye(n_out)[(label + 1) % n_out])
        return enc.problem, c
    C = np.array([np.eye(n_out)[j] - np.eye(n_out)[label] for j in range(n_out) if j != label])
    problem = enc.with_max_objective(net.output_node, C, np.zeros(len(C)), -100.0, 100.0)
    c = np.zeros(problem.num_cols)
    c[-1] = 1.0
    return problem, c


def _solve(name: str, problem: MilpProblem, c: np.ndarray, relax: bool = False, **options):
    solver = make_solver(name, problem, relax=relax)
    solver.set_objective(c)
    return solver.solve(SolveOptions(time_limit=30, **options))


def test_factory_and_names():
    assert isinstance(make_solver("highs", _milp(0, "margin")[0]), HighsSolver)
    assert isinstance(make_solver("cbc", _milp(0, "margin")[0]), PulpSolver)
    assert check_solver("cbc") == "cbc" and set(PULP_SOLVERS) <= set(SOLVERS)
    for bad, word in (("nosuch", "unknown"), (3, "unknown")):
        with pytest.raises(ValueError, match=word) as e:
            check_solver(bad)
        assert "\n" not in str(e.value) and "highs" in str(e.value)
    missing = [s for s in SOLVERS[1:] if installed(s) is None]
    if missing:
        with pytest.raises(ValueError, match="not installed") as e:
            make_solver(missing[0], _milp(0, "margin")[0])
        assert missing[0] in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="nosuch"):
        VerifyOptions(solver="nosuch")
    with pytest.raises(ValueError, match="QP"):
        PulpSolver(_milp(0, "margin")[0]).set_diagonal_hessian(np.ones(3))


@pytest.mark.parametrize("name", PULP_SOLVERS)
@pytest.mark.parametrize("kind", ["margin", "max"])
@pytest.mark.parametrize("seed", range(4))
def test_same_optimum_as_highs(seed, kind, name):
    problem, c = _milp(seed, kind)
    assert problem.integer.sum() >= 3  # a real MIP
    ref = _solve("highs", problem, c)
    res = _solve(name, problem, c)
    assert ref.status == res.status == SolveStatus.OPTIMAL
    assert res.objective == pytest.approx(ref.objective, abs=1e-6)
    # The PuLP result's bound is proven: at most the optimum, and close to it.
    assert ref.objective - 1e-6 <= res.dual_bound <= ref.objective + 1e-9
    assert np.all(res.x >= problem.col_lo) and np.all(res.x <= problem.col_hi)


@pytest.mark.parametrize("name", PULP_SOLVERS)
def test_infeasible_and_cutoff(name):
    problem, c = _milp(1, "margin")
    optimum = _solve("highs", problem, c).objective
    # "the objective is below its optimum by 0.1" has no solution
    cut = MilpProblem(problem.c, sp.vstack([problem.A, sp.csr_matrix(c)]).tocsc(),
                      np.append(problem.row_lo, -np.inf), np.append(problem.row_hi, optimum - 0.1),
                      problem.col_lo, problem.col_hi, problem.integer)
    for solver in ("highs", name):
        res = _solve(solver, cut, c)
        assert res.status == SolveStatus.INFEASIBLE and res.dual_bound == np.inf and res.x is None
    below = _solve(name, problem, c, cutoff=optimum - 0.05)  # nothing better than the cutoff
    assert below.status == SolveStatus.INFEASIBLE and below.dual_bound <= optimum
    above = _solve(name, problem, c, cutoff=optimum + 0.05)
    assert above.status == SolveStatus.OPTIMAL and above.objective == pytest.approx(optimum, abs=1e-6)


@pytest.mark.parametrize("name", PULP_SOLVERS)
@pytest.mark.parametrize("seed", range(3))
def test_lp_relaxation_and_safe_bound_from_duals(seed, name):
    problem, c = _milp(seed, "max")
    ref = _solve("highs", problem, c, relax=True)
    for solver in ("highs", name):
        res = _solve(solver, problem, c, relax=True)
        assert res.status == SolveStatus.OPTIMAL and res.row_dual is not None
        assert res.objective == pytest.approx(ref.objective, abs=1e-6)
        bound = safe_lower_bound(problem, c, res.row_dual)
        assert ref.objective - 1e-6 <= bound <= ref.objective + 1e-9
    # Every binary made continuous by set_integer: an LP as well, with duals.
    solver = make_solver(name, problem)
    solver.set_objective(c)
    solver.set_integer(np.zeros(problem.num_cols, dtype=bool))
    assert not solver.is_mip
    res = solver.solve(SolveOptions(time_limit=30))
    assert res.row_dual is not None and res.objective == pytest.approx(ref.objective, abs=1e-6)


@pytest.mark.parametrize("name", PULP_SOLVERS)
def test_dual_signs_match_highs(name):
    """min x0 + 2 x1 over 1 <= x0 + x1 <= 3 (lower side binds), x1 - x0 = -0.5 (equality), and
    x0 <= 5 (upper side, slack): the same duals as HiGHS (positive when a lower side binds)."""
    A = sp.csc_matrix(np.array([[1.0, 1.0], [-1.0, 1.0], [1.0, 0.0]]))
    problem = MilpProblem(np.array([1.0, 2.0]), A, np.array([1.0, -0.5, -np.inf]), np.array([3.0, -0.5, 5.0]),
                          np.full(2, -10.0), np.full(2, 10.0), np.zeros(2, dtype=bool))
    for c, sign in ((problem.c, 1.0), (np.array([-1.0, 0.0]), -1.0)):  # min -x0: the upper side binds
        ref = _solve("highs", problem, c, relax=True)
        res = _solve(name, problem, c, relax=True)
        assert np.sign(ref.row_dual[0]) == sign
        np.testing.assert_allclose(res.row_dual, ref.row_dual, atol=1e-7)


def _exact(net, x, eps, label, mode, solver):
    return verifier.verify(net, x, eps, label=label, timeout=60, solver=solver,
                           options=VerifyOptions(exact=True, disjunctions=mode))


@pytest.mark.parametrize("mode", ["split", "joint"])
@pytest.mark.parametrize("seed", range(6))
def test_exact_margins_agree_with_highs_and_enumeration(seed, mode, cbc_solves):
    """exact=True runs every label's MIP to optimality (no early stop), on the chosen solver."""
    sizes = [3, 4, 4, 3] if seed % 2 else [4, 6, 3]
    ws, bs, net, x = _tiny_net(seed, sizes)
    rng = np.random.default_rng(seed + 77)
    eps, label = float(rng.uniform(0.05, 0.4)), int(rng.integers(sizes[-1]))
    expected = enumerate_min_margin(ws, bs, np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1), label)
    ref, res = _exact(net, x, eps, label, mode, "highs"), _exact(net, x, eps, label, mode, "cbc")
    for r in (ref, res):
        assert r.margin_lower == pytest.approx(expected, abs=1e-6)
        assert r.margin_upper == pytest.approx(expected, abs=1e-6)
    assert res.status == ref.status and cbc_solves


@pytest.fixture()
def cbc_solves(monkeypatch):
    """Counts PulpSolver solves, to show that CBC really ran."""
    calls = []
    original = PulpSolver.solve

    def counted(self, options):
        calls.append(self.backend)
        return original(self, options)

    monkeypatch.setattr(PulpSolver, "solve", counted)
    return calls


@pytest.mark.parametrize("mode", ["split", "joint"])
def test_same_verdicts_on_the_tiny_suite(mode, cbc_solves):
    """Bounds, attack and branch and bound kept weak, so that the MIP decides many samples."""
    weak = dict(bab="off", symbolic=False, attack_restarts=0, attack_steps=0, lp_tightening=False,
                disjunctions=mode)
    decided = {"highs": [], "cbc": []}
    for seed in range(24):
        sizes = [3, 5, 5, 3] if seed % 2 else [4, 8, 3]
        _, _, net, x = _tiny_net(1000 + seed, sizes)
        label = int(np.argmax(net.forward(x)))
        for eps in (0.1, 0.2, 0.3):
            results = {s: verifier.verify(net, x, eps, label=label, timeout=30, solver=s,
                                          options=VerifyOptions(**weak)) for s in decided}
            assert results["cbc"].status == results["highs"].status, (seed, eps)
            assert Status.UNKNOWN not in (results["cbc"].status, results["highs"].status)
            for s, r in results.items():
                decided[s].append((r.status, r.decided_by))
    assert len(cbc_solves) > 10 and set(cbc_solves) == {"cbc"}
    for verdict in (Status.ROBUST, Status.ADVERSARIAL):
        assert (verdict, "mip") in decided["cbc"]


@pytest.mark.parametrize("norm", ["linf", "l1"])
@pytest.mark.parametrize("seed", [2, 4])
def test_min_distortion_agrees(seed, norm):
    sizes = [3, 4, 3, 3] if seed % 2 else [3, 5, 3]
    ws, bs, net, x = _tiny_net(seed, sizes)
    label = int(np.argmax(net.forward(x)))
    lo, hi = np.clip(x - 0.6, 0, 1), np.clip(x + 0.6, 0, 1)
    goal = [(c.C, c.d) for c in make_goal(3, label, None).disjuncts]
    expected = enumerate_min_distortion(ws, bs, x, lo, hi, goal, norm)
    results = [verifier.min_distortion(net, x, norm=norm, label=label, eps_max=0.6, timeout=60, strategy="direct",
                                       solver=s) for s in ("highs", "cbc")]
    for r in results:
        assert r.status == "optimal"
        assert r.lower == pytest.approx(expected, rel=2e-5, abs=1e-6)
        assert r.upper == pytest.approx(expected, rel=2e-5, abs=1e-6)


@pytest.mark.parametrize("seed", [17, 52, 142])
def test_finished_cbc_l0_search_closes_its_interval(seed):
    """Samples with pixels at 0 (as MNIST's background): CBC's point, read back with 8 digits,
    left unchanged pixels at tiny nonzero values that float32 keeps, so its example counted one
    pixel more than the optimum and the search ended `unknown` [k, k+1] with mip_status
    "optimal" (WK17a: [47, 526]; HiGHS 47/47). A finished CBC solve must close the interval
    at the enumerated minimum, as HiGHS does."""
    rng = np.random.default_rng(seed)
    n = [4, 5, 6][seed % 3]
    sizes = [n, 6, 3] if seed % 2 else [n, 4, 4, 3]
    ws, bs = random_mlp(rng, sizes)
    net = verifier.load(mlp_onnx(ws, bs))
    x = rng.uniform(0.0, 1.0, n)
    x[rng.random(n) < 0.5] = 0.0
    label = int(np.argmax(net.forward(x)))
    lo, hi = np.clip(x - 0.6, 0, 1), np.clip(x + 0.6, 0, 1)
    goal = [(c.C, c.d) for c in make_goal(3, label, None).disjuncts]
    expected = enumerate_min_distortion(ws, bs, x, lo, hi, goal, "l0")
    assert np.isfinite(expected) and expected < n
    for solver in ("highs", "cbc"):
        r = verifier.min_distortion(net, x, norm="l0", label=label, eps_max=0.6, timeout=30, strategy="direct",
                                    solver=solver)
        assert r.stats["mip_status"] == "optimal"
        assert (r.status, r.lower, r.upper) == ("optimal", expected, expected), solver
        assert np.count_nonzero(r.example.astype(np.float32) != x.astype(np.float32)) == expected


def _market_split(m: int = 4, n: int = 30) -> MilpProblem:
    """Cornuejols-Dawande market split: tiny and notoriously hard for branch and bound."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, size=(m, n)).astype(float)
    d = np.floor(a.sum(axis=1) / 2)
    A = sp.hstack([sp.csr_matrix(a), sp.eye(m), -sp.eye(m)]).tocsc()  # a x + s+ - s- = d
    return MilpProblem(np.r_[np.zeros(n), np.ones(2 * m)], A, d, d, np.zeros(n + 2 * m),
                       np.r_[np.ones(n), np.full(2 * m, 1e4)], np.r_[np.ones(n, bool), np.zeros(2 * m, bool)])


def test_time_limited_cbc_is_never_optimal(tmp_path, monkeypatch):
    """Stopped by its time limit with an incumbent, CBC reads "Optimal" / "integer feasible" in
    PuLP: that must be TIME_LIMIT with no bound. Its files go to a private folder, removed."""
    monkeypatch.chdir(tmp_path)
    before = set(Path(tempfile.gettempdir()).glob("verifier-pulp-*"))
    problem = _market_split()
    solver = make_solver("cbc", problem)
    res = solver.solve(SolveOptions(time_limit=1.0))
    assert res.status in (SolveStatus.TIME_LIMIT, SolveStatus.OTHER)
    assert res.status != SolveStatus.OPTIMAL and res.dual_bound == -np.inf
    assert res.time < 1.0 + 3.0
    if res.x is not None:  # the incumbent is still reported, with its true objective
        assert res.extra["pulp_status"] == 1 and res.extra["pulp_sol_status"] == 2
        assert res.objective == pytest.approx(problem.c @ res.x)
    assert list(tmp_path.iterdir()) == []
    assert set(Path(tempfile.gettempdir()).glob("verifier-pulp-*")) <= before


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "verifier.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_cli_solver_option(tmp_path):
    ws, bs, net, x = _tiny_net(1001, [3, 5, 5, 3])
    model = tmp_path / "tiny.onnx"
    model.write_bytes(mlp_onnx(ws, bs))
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    p = _cli(model, "--eps", "0.3", "--input", tmp_path / "x.npy", "--solver", "nosuch")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "nosuch" in p.stderr
    p = _cli(model, "--eps", "0.3", "--input", tmp_path / "x.npy", "--solver", "cbc", "--json")
    assert p.returncode == 0, p.stderr
    import json

    out = json.loads(p.stdout)
    ref = verifier.verify(net, x.astype(np.float32), 0.3, timeout=60)
    assert out["status"] == ref.status.value


def test_batch_results_are_kept_per_solver(tmp_path):
    """The solver is one of the settings a results folder holds: another solver is refused."""
    ws, bs, net, _ = _tiny_net(1001, [3, 5, 5, 3])
    images = np.random.default_rng(0).uniform(0.2, 0.8, (2, 3))
    labels = [int(np.argmax(net.forward(im))) for im in images]
    model, folder = mlp_onnx(ws, bs), tmp_path / "out"
    r = verifier.certify_dataset(model, images, labels, eps=0.05, report=folder, executor="serial", solver="cbc",
                                 progress=False)
    assert r.summary["samples"] == 2
    with pytest.raises(InputError, match="solver"):
        verifier.certify_dataset(model, images, labels, eps=0.05, report=folder, executor="serial", progress=False)


@pytest.mark.parametrize("name", ["highs"] + PULP_SOLVERS)
def test_a_cutoff_never_lifts_the_dual_bound_above_the_optimum(name):
    """With a cutoff below the optimum a solver may still finish "optimal" at an incumbent above
    it (HiGHS does, seeded with a feasible point): the proven bound is then only the cutoff."""
    for seed in range(4):
        for kind in ("margin", "max"):
            problem, c = _milp(seed, kind)
            reference = _solve("highs", problem, c)
            worst = make_solver("highs", problem)
            worst.set_objective(-c)
            starts = [reference.x, worst.solve(SolveOptions(time_limit=10)).x]
            for start in starts:
                solver = make_solver(name, problem)
                solver.set_objective(c)
                res = solver.solve(SolveOptions(time_limit=20, cutoff=reference.objective - 1e-3, initial=start))
                assert res.dual_bound <= reference.objective + 1e-9


def test_solvers_whose_optimal_may_be_a_time_limit_never_prove():
    """GLPK_CMD, SCIP_CMD, GUROBI_CMD, ... report a time-limited incumbent as "Optimal": from
    them an incumbent stays an incumbent (status not OPTIMAL, no bound)."""
    import pulp

    problem, c = _milp(2, "margin")
    solver = make_solver("cbc", problem)
    solver.set_objective(c)
    options = SolveOptions(time_limit=20)
    assert solver.solve(options).status == SolveStatus.OPTIMAL  # CBC's "optimal" is trusted
    solver.prob.assignStatus(pulp.LpStatusOptimal)  # what GLPK_CMD sets after a time limit
    solver.pulp_name = "GLPK_CMD"
    res = solver._result(options, True, 1.0, None, False)
    assert res.status != SolveStatus.OPTIMAL and res.dual_bound == -np.inf and res.x is not None



def _heuristic_effort(solver: HighsSolver) -> float:
    value = solver.highs.getOptionValue("mip_heuristic_effort")
    return value[1] if isinstance(value, tuple) else value


@pytest.mark.parametrize("kind", ["margin", "max"])
@pytest.mark.parametrize("seed", range(4))
def test_without_primal_heuristics_the_same_optimum_and_cutoff_proofs(seed, kind):
    """heuristic_effort=0 (the MIP stage's proofs) changes how HiGHS searches, not what it
    proves: the same optimum, "infeasible" below it under a cutoff; and a later solve without
    the option gets the solver's default back."""
    problem, c = _milp(seed, kind)
    solver = make_solver("highs", problem)
    solver.set_objective(c)
    default = _heuristic_effort(solver)
    ref = solver.solve(SolveOptions(time_limit=30))
    bare = solver.solve(SolveOptions(time_limit=30, heuristic_effort=0.0))
    assert _heuristic_effort(solver) == 0.0 < default
    assert ref.status == bare.status == SolveStatus.OPTIMAL
    assert bare.objective == pytest.approx(ref.objective, abs=1e-6)
    # nothing below the cutoff: "infeasible", or "optimal" at the incumbent kept from the last
    # solve, its bound capped at the cutoff (HighsSolver.solve): either way the cutoff is proven
    cutoff = ref.objective - 0.05
    below = solver.solve(SolveOptions(time_limit=30, cutoff=cutoff, heuristic_effort=0.0))
    assert below.status in (SolveStatus.INFEASIBLE, SolveStatus.OPTIMAL)
    assert below.dual_bound == pytest.approx(cutoff, abs=1e-9)
    solver.solve(SolveOptions(time_limit=30))
    assert _heuristic_effort(solver) == default
