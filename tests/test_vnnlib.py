"""VNN-LIB: the parser on shipped and hand-written files, and property checks against
enumeration and against the eps-ball path."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import verifier
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import assert_verdict_agrees, enumerate_min_margin, enumerate_min_slack
from verifier import Property, Status, VerifyOptions
from verifier.spec.vnnlib import VnnlibError, parse_vnnlib

DATA = Path(__file__).parent / "data"


def ball_vnnlib(x, eps, label, n_out, domain=(0.0, 1.0)) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(x.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, v in enumerate(x):
        lines.append(f"(assert (>= X_{i} {float(max(v - eps, domain[0]))!r}))")
        lines.append(f"(assert (<= X_{i} {float(min(v + eps, domain[1]))!r}))")
    ors = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label)
    lines.append(f"(assert (or {ors}))")
    return "\n".join(lines)


def test_shipped_mnistfc_property():
    prop = Property.from_vnnlib(DATA / "prop_0_0.03.vnnlib")
    assert (prop.num_inputs, prop.num_outputs, len(prop.regions)) == (784, 10, 1)
    region = prop.regions[0]
    assert len(region.disjuncts) == 9
    assert np.all(region.box.lo >= 0) and np.all(region.box.hi <= 1)
    assert np.all(region.box.hi - region.box.lo <= 0.06 + 1e-8)  # eps 0.03, float32-rounded in the file
    # prop_0 is about label 8: every disjunct reads Y_j >= Y_8, i.e. Y_8 - Y_j <= 0.
    for conj in region.disjuncts:
        assert conj.C.shape == (1, 10) and conj.C[0, 8] == 1.0 and conj.C[0].sum() == 0.0


def test_gzipped_file_reads_the_same(tmp_path):
    plain = Property.from_vnnlib(DATA / "prop_7_0.03.vnnlib")
    gz = tmp_path / "p.vnnlib.gz"
    gz.write_bytes(gzip.compress((DATA / "prop_7_0.03.vnnlib").read_bytes()))
    zipped = Property.from_vnnlib(gz)
    np.testing.assert_array_equal(plain.regions[0].box.lo, zipped.regions[0].box.lo)
    assert len(zipped.regions[0].disjuncts) == len(plain.regions[0].disjuncts)


HAND_WRITTEN = """
; a comment (with parentheses) that must be ignored
(declare-const X_0 Real)   (declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (or (and (>= X_0 0.0) (<= X_0 0.5) (>= X_1 -1) (<= X_1 1e0))
            (and (>= X_0 0.5) (<= X_0 1.0) (>= X_1 -1) (<= X_1 1))))
(assert
   (or
      (and (<= (+ Y_0 (* 2 Y_1)) 3.5) (>= (- Y_2 Y_0) -0.25))
      (and (<= (* -1.5 Y_2) (- 1)))
   ))
"""


def test_hand_written_disjunctions_and_linear_terms():
    prop = parse_vnnlib(HAND_WRITTEN, "hand.vnnlib")
    assert (prop.num_inputs, prop.num_outputs) == (2, 3)
    assert len(prop.regions) == 2
    np.testing.assert_array_equal(prop.regions[0].box.lo, [0.0, -1.0])
    np.testing.assert_array_equal(prop.regions[1].box.hi, [1.0, 1.0])
    first, second = prop.regions[0].disjuncts
    # Y_0 + 2 Y_1 <= 3.5 and Y_0 - Y_2 <= 0.25
    np.testing.assert_allclose(first.C, [[1, 2, 0], [1, 0, -1]])
    np.testing.assert_allclose(first.d, [3.5, 0.25])
    # -1.5 Y_2 <= -1
    np.testing.assert_allclose(second.C, [[0, 0, -1.5]])
    np.testing.assert_allclose(second.d, [-1.0])


@pytest.mark.parametrize("outcomes,tried,word,decided_by", [
    ([("unknown", "bab")], 1, "unknown", "bab"),  # one region whose search filled its memory
    ([("unknown", "timeout")], 1, "timeout", "timeout"),
    ([("unknown", "bab"), ("robust", "bounds")], 2, "unknown", "bab"),
    ([("robust", "bounds"), ("unknown", "timeout")], 2, "timeout", "timeout"),
    ([("robust", "bounds"), ("robust", "lp")], 2, "unsat", "lp"),
    ([("unknown", "bab"), ("robust", "bounds")], 1, "timeout", "timeout"),  # no time for the second region
    ([("robust", "bounds"), ("robust", "lp")], 1, "timeout", "timeout"),  # robust needs every region tried
])
def test_unknown_is_a_timeout_only_when_time_ran_out(monkeypatch, outcomes, tried, word, decided_by):
    """`unknown` in the VNN-COMP sense (gave up early, e.g. a full search memory) stays apart
    from `timeout` over the regions of a property: a region's own reason is kept, and "timeout"
    is given when time ran out before every region was tried — also when the ones tried were
    robust (the others were never looked at)."""
    from verifier import api
    from verifier.result import Result
    from verifier.vnncomp import result_word

    prop = parse_vnnlib(HAND_WRITTEN, "hand.vnnlib")
    prop.regions = prop.regions[:len(outcomes)]
    net = verifier.load(mlp_onnx(*random_mlp(np.random.default_rng(0), [2, 4, 3])))
    given = iter(outcomes)
    timeout = 10.0

    def fake_region(net, region, centre, opts, label=None):
        status, by = next(given)
        spent = timeout if len(outcomes) > tried else 0.01  # the whole budget: no region after this one
        return Result(Status(status), None, 0, 0.0, 1.0, None, None, spent, by)

    monkeypatch.setattr(api, "check_region", fake_region)
    r = verifier.check(net, prop, timeout=timeout)
    assert (result_word(r), r.decided_by, r.stats["regions"]) == (word, decided_by, tried)


@pytest.mark.parametrize("text,line,needle", [
    ("(declare-const X_0 Real)\n(assert (<= X_0 1)", 2, "unclosed"),
    ("(declare-const X_0 Real))", 1, "unbalanced"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= Z_1 1))", 3, "unknown variable"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (foo X_0 1))", 3, "unsupported operator"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n\n(assert (<= (* X_0 Y_0) 1))", 4, "not linear"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= (+ X_0 Y_0) 1))", 3, "mixing"),
    ("(declare-const X_0 Real)\n(declare-const Foo Real)", 2, "names must be"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1 2))", 3, "two arguments"),
])
def test_malformed_files_name_the_line(text, line, needle):
    with pytest.raises(VnnlibError) as err:
        parse_vnnlib(text, "bad.vnnlib")
    message = str(err.value)
    assert message.startswith(f"bad.vnnlib:{line}:") and needle in message


def test_unbounded_input_is_an_error():
    text = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0))\n(assert (<= Y_0 0))"
    with pytest.raises(VnnlibError, match="X_0 has no upper bound"):
        parse_vnnlib(text, "open.vnnlib")


@pytest.mark.parametrize("seed", range(4))
def test_eps_ball_as_vnnlib_matches_verify(seed):
    rng = np.random.default_rng(seed)
    ws, bs = random_mlp(rng, [4, 6, 6, 3])
    net = verifier.load(mlp_onnx(ws, bs))
    x = np.float32(rng.uniform(0, 1, 4)).astype(np.float64)
    eps = 0.15
    label = int(np.argmax(net.forward(x)))
    prop = parse_vnnlib(ball_vnnlib(x, eps, label, 3))
    exact = VerifyOptions(exact=True)
    a = verifier.verify(net, x, eps, label=label, options=exact)
    b = verifier.check(net, prop, options=exact)
    assert a.status == b.status
    assert a.margin_lower == pytest.approx(b.margin_lower, abs=1e-6)
    assert a.margin_upper == pytest.approx(b.margin_upper, abs=1e-6)
    assert verifier.verify(net, x, eps, label=label).status == verifier.check(net, prop).status


def _general_property(rng, n_in, n_out):
    """Random boxes and a disjunction of random conjunctions (1-3 rows each)."""
    lo = rng.uniform(0, 0.5, n_in)
    conjunctions = []
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, 4))
        conjunctions.append((np.round(rng.normal(size=(k, n_out)), 3), np.round(rng.normal(size=k) * 0.5, 3)))
    return lo, lo + rng.uniform(0.1, 0.5, n_in), conjunctions


@pytest.mark.parametrize("mode", ["split", "joint"])
@pytest.mark.parametrize("seed", range(10))
def test_general_properties_match_enumeration(seed, mode):
    rng = np.random.default_rng(1000 + seed)
    ws, bs = random_mlp(rng, [3, 5, 4, 3])
    model = mlp_onnx(ws, bs)
    net = verifier.load(model)
    lo, hi, conjunctions = _general_property(rng, 3, 3)
    region = verifier.InputRegion(verifier.spec.ball.InputBox(lo, hi),
                                  [verifier.Conjunction(C, d) for C, d in conjunctions])
    prop = Property([region], 3, 3, "random")
    expected = enumerate_min_slack(ws, bs, lo, hi, conjunctions)
    exact = verifier.check(net, prop, options=VerifyOptions(exact=True, disjunctions=mode))
    assert exact.margin_lower == pytest.approx(expected, abs=1e-6)
    assert exact.margin_upper == pytest.approx(expected, abs=1e-6)
    quick = verifier.check(net, prop, options=VerifyOptions(disjunctions=mode))
    if expected > 1e-4:
        assert quick.status == Status.ROBUST
    elif expected < -1e-4:
        assert quick.status == Status.ADVERSARIAL
        # The witness violates the property when run through onnxruntime.
        s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        y = s.run(None, {"x": quick.counterexample.reshape(1, -1)})[0].ravel().astype(np.float64)
        assert np.all(quick.counterexample >= lo) and np.all(quick.counterexample <= hi)
        assert min(np.max(C @ y - d) for C, d in conjunctions) <= 0


def test_cli_writes_vnncomp_result(tmp_path):
    model = tmp_path / "net.onnx"
    rng = np.random.default_rng(7)
    ws, bs = random_mlp(rng, [4, 8, 3])
    model.write_bytes(mlp_onnx(ws, bs))
    net = verifier.load(model)
    x = np.float32(rng.uniform(0.2, 0.8, 4)).astype(np.float64)
    label = int(np.argmax(net.forward(x)))
    wrong = (label + 1) % 3  # a property about the wrong label: violated at x itself
    spec = tmp_path / "p.vnnlib"
    spec.write_text(ball_vnnlib(x, 0.05, wrong, 3))
    out = tmp_path / "result.txt"
    p = subprocess.run([sys.executable, "-m", "verifier.cli", str(model), "--vnnlib", str(spec),
                        "--timeout", "30", "--result", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert text.startswith("sat\n((X_0 ")
    values = dict(tok.strip().strip("()").split() for tok in text.split("\n")[1:] if tok.strip())
    xs = np.array([float(values[f"X_{i}"]) for i in range(4)], dtype=np.float32)
    ys = np.array([float(values[f"Y_{j}"]) for j in range(3)])
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    y = s.run(None, {"x": xs.reshape(1, -1)})[0].ravel()
    np.testing.assert_allclose(ys, y, atol=1e-6)
    assert np.delete(y, wrong).max() >= y[wrong]  # some Y_j >= Y_wrong: the property is violated
    assert np.all(np.abs(xs - x) <= 0.05 + 1e-7)


@pytest.mark.parametrize("seed", range(3))
def test_cli_processes_option_gives_the_enumerated_answer(tmp_path, seed):
    """`--processes 2` on a deep net whose answer is known by enumeration: the same word as
    the exact minimum says (helpers are spawned from the console command)."""
    rng = np.random.default_rng(40 + seed)
    sizes = [3, 4, 3, 3, 2]
    ws, bs = random_mlp(rng, sizes)
    model = tmp_path / "net.onnx"
    model.write_bytes(mlp_onnx(ws, bs))
    x = rng.uniform(0.3, 0.7, 3)
    label = int(np.argmax(verifier.load(model).forward(x)))
    eps = 0.15
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    expected = enumerate_min_margin(ws, bs, lo, hi, label)
    spec = tmp_path / "p.vnnlib"
    spec.write_text(ball_vnnlib(x, eps, label, 2))
    p = subprocess.run([sys.executable, "-m", "verifier.cli", str(model), "--vnnlib", str(spec), "--timeout", "60",
                        "--processes", "2", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    word = json.loads(p.stdout)["result"]
    if abs(expected) > 1e-4:
        assert word == ("unsat" if expected > 0 else "sat")
    assert word != "unsat" or expected > 0


def test_cli_bad_processes_is_one_line_and_exit_2(tmp_path):
    model = tmp_path / "net.onnx"
    ws, bs = random_mlp(np.random.default_rng(0), [3, 4, 2])
    model.write_bytes(mlp_onnx(ws, bs))
    cases = [(["--processes", "0"], "processes"), (["--processes", "2", "--report", str(tmp_path / "r")], "--processes"),
             (["--device", "tpu"], "device 'tpu'")]
    if not __import__("torch").cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA device"))
    for args, needle in cases:
        p = subprocess.run([sys.executable, "-m", "verifier.cli", str(model), *args], capture_output=True, text=True)
        assert p.returncode == 2
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr


def _box_vnnlib(lo, hi, target, n_out) -> str:
    """"Some Y_j >= Y_target" over a box, written as the competition's files write it (-0.0
    stays -0.0)."""
    lines = [f"(declare-const X_{i} Real)" for i in range(lo.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i in range(lo.size):
        lines += [f"(assert (<= X_{i} {float(hi[i])!r}))", f"(assert (>= X_{i} {float(lo[i])!r}))"]
    ors = " ".join(f"(and (>= Y_{j} Y_{target}))" for j in range(n_out) if j != target)
    lines.append(f"(assert (or {ors}))")
    return "\n".join(lines)


@pytest.mark.parametrize("fixed", ["some", "all"])
def test_degenerate_boxes_are_verified_like_any_other(tmp_path, fixed):
    """Dimensions with lo = hi (ACAS Xu's property 4 fixes X_2 to 0.0, written `<= X_2 -0.0` or
    `<= X_2 0.0` and `>= X_2 0.0`), or the whole box a point: a verdict that agrees with
    enumeration, never an exception."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        ws, bs = random_mlp(rng, [4, 5, 4, 3])
        lo = np.float32(rng.uniform(-1, 0, 4)).astype(np.float64)  # float32 values, as the model reads them
        hi = np.float32(lo + rng.uniform(0.2, 1.0, 4)).astype(np.float64)
        pinned = [0, 2] if fixed == "some" else [0, 1, 2, 3]
        hi[pinned] = lo[pinned]
        lo[0], hi[0] = 0.0, -0.0
        target = int(rng.integers(3))
        conjunctions = [(np.eye(3)[[target]] - np.eye(3)[[j]], np.zeros(1)) for j in range(3) if j != target]
        path = tmp_path / f"p{seed}.vnnlib"
        path.write_text(_box_vnnlib(lo, hi, target, 3))
        result = verifier.check(mlp_onnx(ws, bs), Property.from_vnnlib(path), timeout=30)
        expected = enumerate_min_slack(ws, bs, lo + 0.0, hi + 0.0, conjunctions)
        assert_verdict_agrees(result, expected)
        if result.status == Status.ADVERSARIAL:
            x = np.asarray(result.counterexample, dtype=np.float64).ravel()
            assert np.all(x[pinned] == lo[pinned] + 0.0)


def test_acasxu_property_4_fixes_an_input_and_is_answered():
    """VNN-COMP 2021's ACAS Xu network 1_2 with property 4 (X_2 pinned to 0; the box reads it as
    0.0 <= X_2 <= -0.0): once a traceback from the attack. Every correct 2021 tool said unsat."""
    net = verifier.load(DATA / "acasxu_run2a_1_2.onnx")
    prop = Property.from_vnnlib(DATA / "acasxu_prop_4.vnnlib")
    box = prop.regions[0].box
    assert box.lo[2] == box.hi[2] == 0.0
    result = verifier.check(net, prop, timeout=20)
    assert result.status in (Status.ROBUST, Status.UNKNOWN)
    assert result.margin_lower <= result.margin_upper
