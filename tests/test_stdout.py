"""Stdout carries only what the user asked for, in every mode of the `verify` command.

Each run is a real process, as a user or a script piping into `python -m json.tool` sees it.
highspy >= 1.16 prints a banner from `Highs()` itself and PuLP's HiGHS wrapper builds one too;
neither may reach stdout or stderr (solvers/quiet.py). The runs use mnistfc's 256x2 network on
sample 1 at eps 0.03, which bounds alone do not decide: its LPs and MIPs construct HiGHS.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from verifier.data import embedded_mnist

DATA = Path(__file__).parent / "data"
MLP = DATA / "mnist-net_256x2.onnx"
NUMBER = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf|nan)"


def run(*args, timeout=300):
    p = subprocess.run([sys.executable, "-m", "verifier.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    for stream in (p.stdout, p.stderr):
        assert "HiGHS" not in stream and "Copyright" not in stream, stream[:500]
        assert "Traceback" not in stream, stream[-2000:]
    return p


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    images, labels = embedded_mnist()
    path = tmp_path_factory.mktemp("x") / "x.npy"
    np.save(path, images[1].astype(np.float32))
    return path, int(labels[1])


def test_muted_native_output_silences_file_descriptors():
    code = ("import os, sys\nfrom solvers.quiet import muted_native_output\nprint('before', flush=True)\n"
            "with muted_native_output():\n    os.write(1, b'native out\\n'); os.write(2, b'native err\\n')\n"
            "    print('python inside')\nprint('after')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "before\nafter\n" and p.stderr == ""


def test_table_stdout_is_header_rows_and_summary():
    p = run(MLP, "--eps", "0.03", "--start", "1", "--limit", "2")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:4] == ["index", "label", "pred", "status"]
    row = re.compile(rf"^\s*\d+\s+\d+\s+\d+\s+(robust|adversarial|unknown)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+\S")
    assert all(row.match(ln) for ln in lines[1:-1]) and len(lines) == 4, p.stdout
    assert lines[-1].startswith("summary: 2 samples")


@pytest.mark.parametrize("solver", ["highs", "cbc", "pulp-highs"])
def test_single_sample_json_with_each_solver(sample, solver):
    path, label = sample
    p = run(MLP, "--eps", "0.03", "--input", path, "--label", label, "--json", "--solver", solver)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] in {"robust", "adversarial", "unknown"} and out["label"] == label


def test_table_json_is_one_object():
    p = run(MLP, "--eps", "0.03", "--start", "1", "--limit", "2", "--json", "--solver", "pulp-highs")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["summary"]["samples"] == 2 and len(out["results"]) == 2


def _parse_vnncomp(text: str) -> tuple[str, dict[str, float]]:
    """The VNN-COMP result grammar: a verdict word; after `sat`, one parenthesised list of
    (X_i v) and (Y_j v) pairs and nothing else."""
    word, _, rest = text.partition("\n")
    assert word in {"sat", "unsat", "timeout", "unknown"}, text[:200]
    if word != "sat":
        assert rest == "", rest[:200]
        return word, {}
    body = rest.strip()
    assert body.startswith("(") and body.endswith(")"), body[:200]
    pairs = re.findall(rf"\(([XY]_\d+)\s+({NUMBER})\)", body[1:-1])
    assert re.sub(rf"\(([XY]_\d+)\s+({NUMBER})\)", "", body[1:-1]).strip() == ""
    return word, {k: float(v) for k, v in pairs}


@pytest.mark.parametrize("prop", ["prop_0_0.03.vnnlib", "prop_7_0.03.vnnlib"])
def test_vnnlib_stdout_is_the_result_file(prop, tmp_path):
    result = tmp_path / "out.txt"
    p = run(MLP, "--vnnlib", DATA / prop, "--timeout", "60", "--result", result)
    assert p.returncode == 0, p.stderr
    assert p.stdout == result.read_text()
    word, values = _parse_vnncomp(p.stdout)
    if word == "sat":
        assert len([k for k in values if k.startswith("X_")]) == 784 and len(values) == 794
    q = run(MLP, "--vnnlib", DATA / prop, "--timeout", "60", "--json")
    assert json.loads(q.stdout)["result"] == word


@pytest.mark.parametrize("solver", ["highs", "cbc"])
def test_distortion_json(sample, solver):
    path, label = sample
    p = run(MLP, "--input", path, "--distortion", "linf", "--eps-max", "0.05", "--json", "--timeout", "8",
            "--solver", solver)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] in {"optimal", "infeasible", "unknown"} and out["label"] == label
    assert float(out["lower"]) <= float(out["upper"])  # infinite bounds are written as strings


def test_report_json_summary(tmp_path):
    p = run(MLP, "--eps", "0.03", "--start", "1", "--limit", "2", "--workers", "2", "--report", tmp_path / "out",
            "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["samples"] == 2 and out["robust"] + out["adversarial"] + out["unknown"] == 2
