"""CLI conventions: --version, `python -m verifier`, --config FILE.toml (and the run.toml a
--report run writes), and --mean/--std for a model whose normalisation is outside the network."""

import json
import sqlite3
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path
from unittest import mock

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import verifier
from verifier.batch.store import DESCRIPTIVE
from verifier.cli import main

#: Dyadic normalisation and weights: folding (x - m) / s into the first convolution is exact in
#: float32, so the network with the normalisation inside computes exactly the same function.
MEAN, STD = np.array([0.5, 0.25, 0.375]), np.array([0.25, 0.5, 0.125])
#: CIFAR-10's, for the counterexample check (not dyadic: onnxruntime computes it in float32).
CIFAR_MEAN, CIFAR_STD = "0.4914,0.4822,0.4465", "0.2470,0.2435,0.2616"


def conv_net(normalisation_inside: bool = False) -> bytes:
    """Conv(3 -> 4, 3x3, no padding) on a 3x6x6 input, ReLU, dense 64 -> 8, ReLU, dense 8 -> 3.
    With `normalisation_inside`, the first layer computes conv((x - MEAN) / STD) from pixels:
    K / s_c and bias - sum K * m_c / s_c (no padding, so no border pixel breaks the fold)."""
    rng = np.random.default_rng(1)
    k, bk = rng.integers(-8, 9, size=(4, 3, 3, 3)) / 16, rng.integers(-8, 9, size=4) / 16
    w1, b1 = rng.integers(-8, 9, size=(8, 64)) / 32, rng.integers(-8, 9, size=8) / 16
    w2, b2 = rng.integers(-8, 9, size=(3, 8)) / 8, np.zeros(3)
    if normalisation_inside:
        bk = bk - (k * (MEAN / STD)[None, :, None, None]).sum(axis=(1, 2, 3))
        k = k / STD[None, :, None, None]
    arrays = {"K": k, "bK": bk, "W1": w1, "b1": b1, "W2": w2, "b2": b2}
    assert all(np.array_equal(v.astype(np.float32), v) for v in arrays.values())  # the fold is exact
    nodes = [helper.make_node("Conv", ["x", "K", "bK"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "W1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["hr"]), helper.make_node("Gemm", ["hr", "W2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(v.astype(np.float32), n) for n, v in arrays.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def cli(capsys, *args) -> tuple[int, str, str]:
    """The `verify` command in this process (exit code, stdout, stderr): what the installed
    script runs, without an interpreter start per call."""
    with mock.patch.object(sys, "argv", ["verify", *map(str, args)]), pytest.raises(SystemExit) as stop:
        main()
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def one_error_line(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "cnn.onnx").write_bytes(conv_net())
    rng = np.random.default_rng(5)
    np.save(tmp_path / "x.npy", rng.uniform(size=(3, 6, 6)).astype(np.float32))
    images = rng.uniform(size=(4, 3, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 1, 1, 2]))
    return tmp_path


def test_version_and_python_m_verifier():
    p = subprocess.run([sys.executable, "-m", "verifier", "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == version("relu-verifier"), p.stderr
    p = subprocess.run([sys.executable, "-m", "verifier", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "--config" in p.stdout and "--mean" in p.stdout, p.stderr


def test_config_file_gives_the_command_lines_result_and_the_command_line_wins(files, capsys):
    args = ["--input", files / "x.npy", "--eps", "0.05", "--timeout", "30", "--mean", CIFAR_MEAN, "--std", CIFAR_STD]
    code, out, err = cli(capsys, files / "cnn.onnx", *args, "--json")
    assert code == 0, err
    by_hand = json.loads(out)
    (files / "c.toml").write_text(f'model = "{files / "cnn.onnx"}"\ninput = "{files / "x.npy"}"\neps = 0.05\n'
                                  f'timeout = 30\njson = true\nmean = [{CIFAR_MEAN}]\nstd = "{CIFAR_STD}"\n')
    code, out, err = cli(capsys, "--config", files / "c.toml")
    assert code == 0, err
    from_file = json.loads(out)
    for key in ("status", "label", "prediction", "adversarial_label"):
        assert from_file[key] == by_hand[key]
    assert from_file["margin_lower"] == pytest.approx(by_hand["margin_lower"], abs=1e-9)
    assert from_file["margin_upper"] == pytest.approx(by_hand["margin_upper"], abs=1e-9)
    # The command line wins: eps 0 leaves only the clean input, whose margin is both bounds.
    code, out, err = cli(capsys, "--config", files / "c.toml", "--eps", "0")
    zero = json.loads(out)
    assert code == 0 and zero["margin_lower"] == pytest.approx(zero["margin_upper"], abs=1e-9)
    assert zero["margin_lower"] >= by_hand["margin_lower"]
    # ... and so does a model given as the argument (this one expects no normalisation: other logits).
    (files / "plain.onnx").write_bytes(conv_net(normalisation_inside=True))
    code, out, err = cli(capsys, files / "plain.onnx", "--config", files / "c.toml", "--mean", "0", "--std", "1")
    assert code == 0 and json.loads(out)["margin_upper"] != pytest.approx(by_hand["margin_upper"], abs=1e-3)
    # A flag the file sets true is turned off on the command line: the table, not JSON.
    code, out, err = cli(capsys, "--config", files / "c.toml", "--no-json")
    assert code == 0, err
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
    assert by_hand["status"] in out


@pytest.mark.parametrize("text,needle", [
    ("epsilon = 0.1", "unknown key 'epsilon'; did you mean 'eps'?"),
    ("eps = true", 'eps must be a number, a list of numbers or text such as "0.01,0.02", got a boolean'),
    ('eps = "0.1,x"', "eps: 'x' is not a number"),
    ("limit = 2.5", "limit must be an integer, got a float"),
    ("json = 1", "json must be true or false, got an integer"),
    ("target = [1, \"a\"]", "target[1] must be an integer"),
    ("eps-max = 0.1\neps_max = 0.2", "'eps_max' and 'eps-max' are the same option"),
    ("config = \"other.toml\"", "unknown key 'config' (it cannot be set from a config file)"),
    ("mean = [0.5, true]", "mean must be a number or a list of numbers"),
    ("eps = ", "not a valid TOML file"),
])
def test_a_bad_config_is_one_line_naming_the_file_and_key(files, capsys, text, needle):
    path = files / "bad.toml"
    path.write_text(text + "\n")
    line = one_error_line(*cli(capsys, files / "cnn.onnx", "--config", path)[::2])
    assert str(path) in line and needle in line


def _settings(folder: Path) -> dict:
    with sqlite3.connect(folder / "results.sqlite") as db:
        settings = json.loads(db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0])
    return {k: v for k, v in settings.items() if k not in DESCRIPTIVE}


def test_run_toml_of_a_report_run_repeats_it(files, capsys, monkeypatch):
    monkeypatch.chdir(files)  # relative paths on the command line: run.toml holds them absolute
    args = ["cnn.onnx", "--data", "d.npz", "--report", "first", "--eps", "0.03", "--executor", "serial",
            "--timeout", "20", "--mean", CIFAR_MEAN, "--std", CIFAR_STD, "--target", "2", "--json"]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    first = json.loads(out)
    options = tomllib.loads((files / "first" / "run.toml").read_text())
    assert options["model"] == str(files / "cnn.onnx") and options["report"] == str(files / "first")
    assert options["eps"] == 0.03 and options["mean"] == [0.4914, 0.4822, 0.4465] and options["target"] == [2]
    assert options["json"] is True and "label" not in options and "config" not in options
    # The same folder: the store accepts the settings (nothing left to do) ...
    code, out, err = cli(capsys, "--config", files / "first" / "run.toml")
    assert code == 0, err
    assert json.loads(out)["samples"] == 4
    # ... and another folder from another directory repeats the run: equal settings, equal verdicts.
    monkeypatch.chdir(files.parent)
    code, out, err = cli(capsys, "--config", files / "first" / "run.toml", "--report", files / "second")
    assert code == 0, err
    second = json.loads(out)
    assert _settings(files / "second") == _settings(files / "first")
    for key in ("robust", "adversarial", "unknown", "misclassified"):
        assert second[key] == first[key]
    assert tomllib.loads((files / "second" / "run.toml").read_text())["report"] == str(files / "second")


def test_mean_std_equals_the_network_with_the_normalisation_inside():
    """verify(model with mean/std) at pixel eps gives the verdicts and exact margins of the
    hand-built network that does (x - m) / s in its first layer."""
    outside = verifier.load(conv_net(), mean=MEAN, std=STD)
    inside = verifier.load(conv_net(normalisation_inside=True))
    rng = np.random.default_rng(5)
    options = verifier.VerifyOptions(exact=True, timeout=30)
    verdicts = set()
    for _ in range(3):
        x = rng.uniform(size=(3, 6, 6))
        assert outside.forward(x) == pytest.approx(inside.forward(x), abs=1e-9)
        for eps in (0.02, 0.05):
            a, b = verifier.verify(outside, x, eps, options=options), verifier.verify(inside, x, eps, options=options)
            assert (a.status, a.label) == (b.status, b.label)
            assert a.margin_lower == pytest.approx(b.margin_lower, abs=1e-6)
            assert a.margin_upper == pytest.approx(b.margin_upper, abs=1e-6)
            verdicts.add(a.status.value)
    assert verdicts == {"robust", "adversarial"}  # both kinds of answer were compared


def test_counterexample_with_mean_std_changes_the_original_models_class(files, capsys):
    """The example is in pixel units (inside the eps-ball and [0, 1]); onnxruntime on the
    original model, fed (example - mean) / std computed by numpy, gives another class."""
    x = np.load(files / "x.npy")
    code, out, err = cli(capsys, files / "cnn.onnx", "--input", files / "x.npy", "--eps", "0.1", "--mean", CIFAR_MEAN,
                         "--std", CIFAR_STD, "--json", "--save-example", files / "adv.npy")
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "adversarial"
    example = np.load(files / "adv.npy").astype(np.float32)
    assert np.abs(example.astype(np.float64) - x).max() <= 0.1 + 1e-7 and 0 <= example.min() and example.max() <= 1
    mean = np.array(CIFAR_MEAN.split(","), dtype=np.float32).reshape(3, 1, 1)
    std = np.array(CIFAR_STD.split(","), dtype=np.float32).reshape(3, 1, 1)
    session = ort.InferenceSession(conv_net(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"x": ((example - mean) / std)[None]})[0].ravel()
    clean = session.run(None, {"x": ((x - mean) / std)[None]})[0].ravel()
    label = result["label"]
    assert label == int(np.argmax(clean))
    assert logits[label] <= np.delete(logits, label).max()


def test_mean_std_from_python_on_a_torch_module():
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32, 3))
    net = verifier.load(module, (3, 6, 6), mean=[0.4914, 0.4822, 0.4465], std=0.25)
    x = np.random.default_rng(0).uniform(size=(3, 6, 6)).astype(np.float32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).reshape(3, 1, 1)
    with torch.no_grad():
        expected = module(((torch.from_numpy(x) - mean) / 0.25)[None]).numpy().ravel()
    assert net.forward(x) == pytest.approx(expected, abs=1e-5)
    assert net.name == "Sequential" and net.info["normalisation"]["std"] == [0.25]
    # the per-channel values as the tensors such code already holds give the same network
    as_tensors = verifier.load(module, (3, 6, 6), mean=mean, std=torch.tensor(0.25))
    assert as_tensors.forward(x) == pytest.approx(net.forward(x), abs=1e-6)


@pytest.mark.parametrize("args,needle", [
    (["--std", "0"], "--std must be > 0"),
    (["--mean", "0.5", "--std", "0.2,-0.1,0.3"], "--std must be > 0"),
    (["--mean", "0.5,0.5"], "--mean has 2 values, but the model's input has 3 channels"),
    (["--mean", "0.5,abc,0.5"], "--mean: 'abc' is not a number"),
    (["--std", "nan"], "--std: 'nan' is not a finite number"),
    (["{tmp}/mlp.onnx", "--mean", "0.1,0.2,0.3"], "has no channel axis (it is flat or 2-D): give one value"),
])
def test_bad_mean_or_std_is_one_line(files, capsys, args, needle):
    from tests.nets import mlp_onnx, random_mlp

    (files / "mlp.onnx").write_bytes(mlp_onnx(*random_mlp(np.random.default_rng(0), [3, 4, 2])))
    model = [] if args[0].startswith("{tmp}") else [files / "cnn.onnx"]
    line = one_error_line(*cli(capsys, *model, *[a.format(tmp=files) for a in args], "--input", files / "x.npy")[::2])
    assert needle in line
