"""The `verify` command end to end, as a user runs it (a real process)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from verifier.data import embedded_mnist

MODEL = str(Path(__file__).parent / "data" / "wk17a_linf0.1.onnx")


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "verifier.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_embedded_default_table():
    p = run(MODEL, "--eps", "0.1", "--limit", "10")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["index", "label", "pred", "status"]
    rows = [ln.split() for ln in lines[1:-1]]
    assert [int(r[0]) for r in rows] == list(range(10))
    _, labels = embedded_mnist()
    assert [int(r[1]) for r in rows] == labels[:10].tolist()
    statuses = [r[3] for r in rows]
    assert set(statuses) <= {"robust", "adversarial", "unknown"}
    # Sample 8 is a known non-robust image at eps 0.1 for this network; the rest are robust.
    assert statuses[8] == "adversarial" and statuses.count("robust") == 9
    assert lines[-1].startswith("summary: 10 samples") and "9 robust, 1 adversarial, 0 unknown" in lines[-1]


def test_single_sample_json_and_saved_counterexample(tmp_path):
    images, labels = embedded_mnist()
    x = images[8].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    adv = tmp_path / "adv.npy"
    p = run(MODEL, "--eps", "0.1", "--input", tmp_path / "x.npy", "--label", int(labels[8]), "--json",
            "--save-example", adv)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert {"status", "label", "margin_lower", "margin_upper", "time"} <= set(out)
    assert out["status"] == "adversarial" and out["margin_upper"] <= 0
    ce = np.load(adv)
    assert ce.shape == x.shape and np.abs(ce.astype(np.float64) - x).max() <= 0.1
    s = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    logits = s.run(None, {"input": ce.reshape(1, 1, 28, 28)})[0].ravel()
    assert np.argmax(logits) != labels[8] or logits.max() == logits[labels[8]]


@pytest.fixture()
def bad_inputs(tmp_path):
    nan = np.full((28, 28), 0.5)
    nan[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "short.npy", np.zeros(5))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    np.save(tmp_path / "ok.npy", np.zeros((28, 28)))
    return tmp_path


@pytest.mark.parametrize("args,needle", [
    (["{tmp}/missing.onnx"], "missing.onnx"),
    (["{tmp}/junk.onnx"], "not a valid ONNX model"),
    ([MODEL, "--eps", "-0.1"], "--eps"),
    ([MODEL, "--input", "{tmp}/nan.npy"], "NaN"),
    ([MODEL, "--input", "{tmp}/short.npy"], "expects 784"),
    ([MODEL, "--input", "{tmp}/ok.npy", "--label", "10"], "label 10 is out of range"),
    ([MODEL, "--input", "{tmp}/missing.npy"], "missing.npy"),
    ([MODEL, "--input", "{tmp}/junk.onnx"], "junk.onnx"),
])
def test_bad_input_is_one_line_and_exit_2(bad_inputs, args, needle):
    p = run(*[a.format(tmp=bad_inputs) for a in args])
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_distortion_single_sample_json(tmp_path):
    """--distortion on one sample: the JSON interval holds the enumerated minimum, and the saved
    example is onnxruntime-adversarial for the requested target at distance `upper`."""
    from tests.nets import mlp_onnx
    from tests.oracles import enumerate_min_distortion
    from tests.test_distortion import _conjunctions, _tiny

    ws, bs, x, label = _tiny(9)
    model = tmp_path / "tiny.onnx"
    model.write_bytes(mlp_onnx(ws, bs))
    np.save(tmp_path / "x.npy", x)
    reachable = {t: enumerate_min_distortion(ws, bs, x, np.zeros(3), np.ones(3), _conjunctions(3, label, [t]), "l1")
                 for t in range(3) if t != label}
    target, expected = min(reachable.items(), key=lambda kv: kv[1])
    assert np.isfinite(expected)
    adv = tmp_path / "adv.npy"
    p = run(model, "--input", tmp_path / "x.npy", "--distortion", "l1", "--target", target, "--json",
            "--save-example", adv)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "optimal" and out["targets"] == [target]
    assert out["lower"] <= expected + 1e-6 and out["upper"] == pytest.approx(expected, rel=2e-5, abs=1e-6)
    example = np.load(adv)
    logits = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"x": example.reshape(1, 3).astype(np.float32)})[0].ravel()
    assert logits[target] >= logits.max()
    assert np.abs(example - x).sum() == pytest.approx(out["upper"], rel=1e-9)


def test_distortion_table_on_the_embedded_slice():
    p = run(MODEL, "--distortion", "linf", "--start", "8", "--limit", "1", "--eps-max", "0.1", "--timeout", "10")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].split() == ["index", "label", "adv", "status", "lower", "upper", "time_s"]
    index, label, adv, status, lower, upper, _ = lines[1].split()
    assert (index, label) == ("8", str(embedded_mnist()[1][8])) and adv != label
    assert status in ("optimal", "unknown") and 0 <= float(lower) <= float(upper) <= 0.1 + 1e-9
    assert lines[-1].startswith("summary: 1 samples, linf")


@pytest.mark.parametrize("args,needle", [
    (["--distortion", "l5"], "norm 'l5'"),
    (["--distortion", "linf", "--input", "{tmp}/ok.npy", "--label", "3", "--target", "3"], "label itself"),
    (["--distortion", "l1", "--input", "{tmp}/ok.npy", "--target", "12"], "target 12 is out of range"),
    (["--distortion", "l1", "--strategy", "bisection", "--input", "{tmp}/ok.npy"], "bisection"),
])
def test_bad_distortion_arguments_exit_2(bad_inputs, args, needle):
    p = run(MODEL, *[a.format(tmp=bad_inputs) for a in args])
    assert p.returncode == 2, p.stdout
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
