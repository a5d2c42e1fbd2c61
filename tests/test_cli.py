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
