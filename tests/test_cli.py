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
    import torch

    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "model.pt")
    (tmp_path / "cnn.onnx").write_bytes(_channels_first_cnn())
    np.save(tmp_path / "hwc.npy", np.zeros((8, 8, 3)))
    np.savez(tmp_path / "hwc.npz", images=np.zeros((2, 8, 8, 3), dtype=np.uint8), labels=np.zeros(2, dtype=np.int64))
    return tmp_path


def _channels_first_cnn() -> bytes:
    """Conv (3 -> 2 channels) on a 3x8x8 input, then a dense layer to 2 outputs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "K"),
             numpy_helper.from_array(rng.normal(size=(2, 72)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(2, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "K"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


@pytest.mark.parametrize("args,needle", [
    (["{tmp}/missing.onnx"], "missing.onnx"),
    (["{tmp}/junk.onnx"], "not a valid ONNX model"),
    ([MODEL, "--eps", "-0.1"], "--eps"),
    ([MODEL, "--input", "{tmp}/nan.npy"], "NaN"),
    ([MODEL, "--input", "{tmp}/short.npy"], "expects 784"),
    ([MODEL, "--input", "{tmp}/ok.npy", "--label", "10"], "label 10 is out of range"),
    ([MODEL, "--input", "{tmp}/missing.npy"], "missing.npy"),
    ([MODEL, "--input", "{tmp}/junk.onnx"], "junk.onnx"),
    ([MODEL, "--eps", "abc"], "--eps"),
    ([MODEL, "--bogus-option"], "--bogus-option"),
    ([MODEL, "--limit", "0"], "--limit must be >= 1"),
    ([MODEL, "--split", "pixels"], "split='pixels'"),
    ([MODEL, "--eps", "0.1", "--result", "{tmp}/r.txt"], "needs --vnnlib"),
    ([MODEL, "--input", "{tmp}/ok.npy", "--save-example", "{tmp}/no/such/dir/a.npy"], "does not exist"),
    (["{tmp}/model.pt"], "PyTorch checkpoint"),
    (["{tmp}/cnn.onnx", "--input", "{tmp}/hwc.npy"], "(8, 8, 3), a transpose of the model's input shape (3, 8, 8)"),
    (["{tmp}/cnn.onnx", "--data", "{tmp}/hwc.npz", "--report", "{tmp}/out"], "a transpose of the model's input shape"),
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
    (["--distortion", "l1", "--input", "{tmp}/ok.npy", "--target", "12"], "target 12 is out of range"),
    (["--distortion", "l1", "--strategy", "bisection", "--input", "{tmp}/ok.npy"], "bisection"),
])
def test_bad_distortion_arguments_exit_2(bad_inputs, args, needle):
    p = run(MODEL, *[a.format(tmp=bad_inputs) for a in args])
    assert p.returncode == 2, p.stdout
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_internal_error_is_one_line_exit_3_with_the_traceback_kept(tmp_path):
    """A bug inside the verifier (simulated: the search raises) is one line naming the model and
    the error, exit code 3, and the traceback in the log file it names."""
    code = ("import sys, verifier.api\n"
            "def broken(*a, **k):\n    raise RuntimeError('simulated bug')\n"
            "verifier.api.check_region = broken\n"
            "from verifier.cli import main\nsys.argv = ['verify'] + sys.argv[1:]\nmain()\n")
    np.save(tmp_path / "x.npy", embedded_mnist()[0][0])
    p = subprocess.run([sys.executable, "-c", code, MODEL, "--input", tmp_path / "x.npy"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 3 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert MODEL in lines[0] and "RuntimeError: simulated bug" in lines[0]
    log = Path(lines[0].rsplit("traceback in ", 1)[1].rstrip(")"))
    assert "simulated bug" in log.read_text() and "Traceback" in log.read_text()
    log.unlink()


def test_python_api_names_what_it_was_given():
    import torch

    import verifier

    with pytest.raises(verifier.VerifierError, match="state dict"):
        verifier.load(torch.nn.Linear(3, 2).state_dict())
    with pytest.raises(verifier.VerifierError, match="got a value of type int"):
        verifier.load(3)


def test_failed_example_write_keeps_the_printed_verdict(tmp_path):
    """The example cannot be written (here: /proc takes no new files): the verdict is printed
    first, then one line names the file, exit code 2."""
    images, labels = embedded_mnist()
    np.save(tmp_path / "x.npy", images[8].astype(np.float32))
    p = run(MODEL, "--eps", "0.1", "--input", tmp_path / "x.npy", "--json", "--save-example", "/proc/adv.npy")
    assert p.returncode == 2 and json.loads(p.stdout)["status"] == "adversarial"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "/proc/adv.npy" in lines[0] and "Traceback" not in p.stderr


def test_acas_xu_property_by_input_split_and_forced_relu_split():
    """ACAS Xu network 1_2, property 4: `unsat` by the input split under the default --split auto
    (the 2021 consensus), and the ReLU search when --split relu forces it (no input split)."""
    data = Path(__file__).parent / "data"
    args = [data / "acasxu_run2a_1_2.onnx", "--vnnlib", data / "acasxu_prop_4.vnnlib", "--timeout", "20"]
    auto = run(*args)
    assert auto.returncode == 0 and auto.stdout.splitlines()[0] == "unsat" and "(input_split)" in auto.stderr
    relu = run(*args, "--split", "relu", "--timeout", "3")
    assert relu.returncode == 0 and "input_split" not in relu.stdout + relu.stderr
