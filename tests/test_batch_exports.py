"""Batch exports (--save-examples), reruns of unknown samples (--rerun-unknown) and the plain
progress log of a run without a terminal."""

import io
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import verifier
from verifier import InputError
from verifier.batch.progress import BatchProgress, progress_interval
from verifier.batch.rerun import merged
from verifier.batch.store import ResultStore
from verifier.data import embedded_mnist
from tests.nets import mlp_onnx, random_mlp

WK17A = Path(__file__).parent / "data" / "wk17a_linf0.1.onnx"
EPS = 0.02
LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (\d+)/(\d+) done: robust (\d+), adversarial (\d+), unknown (\d+); "
                  r"elapsed (\d+h\d\dm|\d+m\d\ds|\d+s), ETA (\S+)$")


def _raw(folder: Path) -> dict[int, tuple]:
    """Every stored row as SQLite holds it (blobs as bytes), by index."""
    with sqlite3.connect(folder / "results.sqlite") as db:
        return {r[0]: r for r in db.execute('SELECT * FROM results ORDER BY "index"')}


def _meta(folder: Path, key: str):
    with sqlite3.connect(folder / "results.sqlite") as db:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])


def _blob(folder: Path, index: int, column: str) -> np.ndarray | None:
    with sqlite3.connect(folder / "results.sqlite") as db:
        value = db.execute(f'SELECT "{column}" FROM results WHERE "index" = ?', (index,)).fetchone()[0]
    return None if value is None else np.frombuffer(value, dtype=np.float32)


def _label_of(session: ort.InferenceSession, x: np.ndarray) -> tuple[int, np.ndarray]:
    name = session.get_inputs()[0].name
    logits = session.run(None, {name: x.astype(np.float32).reshape(1, 1, 28, 28)})[0].ravel()
    return int(np.argmax(logits)), logits


def _fools(session, x, label) -> bool:
    """The point changes the class (ties count as adversarial)."""
    top, logits = _label_of(session, x)
    return top != label or np.sum(logits == logits[label]) > 1 or logits.max() > logits[label]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """784-8-10 on 28x28 images, its 10 labels its own predictions: at eps 0.02 one sample is
    robust and the others adversarial, each in well under a second. A report run with the
    L-infinity distortion and --save-examples, and the same data as an .npz for the CLI."""
    root = tmp_path_factory.mktemp("tiny")
    ws, bs = random_mlp(np.random.default_rng(0), [784, 8, 10])
    model = mlp_onnx(ws, bs, [1, 1, 28, 28])
    (root / "tiny.onnx").write_bytes(model)
    images = embedded_mnist()[0][:10]
    labels = verifier.load(model).forward(images.reshape(10, -1)).argmax(axis=1)
    np.savez(root / "set.npz", images=images, labels=labels)
    result = verifier.certify_dataset(model, images, labels, eps=EPS, report=root / "r", executor="serial",
                                      distortion="linf", save_examples=root / "ex", progress=False)
    return {"root": root, "model": model, "images": images, "labels": labels, "result": result}


def test_report_run_exports_the_stored_examples_in_the_model_shape(tiny):
    folder, out, images = tiny["root"] / "r", tiny["root"] / "ex", tiny["images"]
    result = tiny["result"]
    session = ort.InferenceSession(tiny["model"], providers=["CPUExecutionProvider"])
    assert result.summary["adversarial"] >= 5 and result.summary["robust"] >= 1
    assert _meta(folder, "input_shape") == [1, 28, 28]
    with_example = {r["index"] for r in result.rows
                    if r["counterexample"] is not None or r["distortion_example"] is not None}
    assert {p.name for p in out.iterdir()} == {f"sample_{i:05d}.npz" for i in with_example}
    assert sorted(result.examples) == sorted(out.iterdir())
    for row in result.rows:
        if row["index"] not in with_example:
            continue
        f = np.load(out / f"sample_{row['index']:05d}.npz")
        assert int(f["index"]) == row["index"] and int(f["label"]) == row["label"]
        assert f["original"].shape == (1, 28, 28)
        assert np.array_equal(f["original"], images[row["index"]].reshape(1, 28, 28))
        kinds = set(f["examples"].tolist())
        assert ("perturbed" in kinds) == (row["verdict"] == "adversarial") == ("perturbed" in f.files)
        if "perturbed" in kinds:
            stored = _blob(folder, row["index"], "counterexample").reshape(1, 28, 28)
            assert f["perturbed"].shape == (1, 28, 28) and f["perturbed"].dtype == np.float32
            assert np.array_equal(f["perturbed"], stored)
            assert int(f["adversarial_label"]) == row["adversarial_label"] != row["label"]
            assert np.abs(f["perturbed"].astype(np.float64) - f["original"]).max() <= EPS * (1 + 1e-6)
            assert f["perturbed"].min() >= 0 and f["perturbed"].max() <= 1
            assert _fools(session, f["perturbed"], row["label"])
        assert "distortion_example" in kinds  # linf on this net: found for every sample
        minimal = f["distortion_example"]
        assert np.array_equal(minimal, _blob(folder, row["index"], "distortion_example").reshape(1, 28, 28))
        assert str(f["distortion_norm"]) == "linf" and int(f["distortion_label"]) == row["distortion_label"]
        assert np.abs(minimal.astype(np.float64) - f["original"]).max() <= float(f["distortion"]) + 1e-6
        assert _fools(session, minimal, row["label"])


def test_export_from_a_finished_folder_computes_nothing(tiny, monkeypatch, capsys):
    """The CLI on the finished folder with --save-examples: no sample is run, and the files
    equal those of the run that computed them."""
    import verifier.batch.run as run
    from verifier.cli import app

    calls = []
    monkeypatch.setattr(run, "run_tasks", lambda *a, **k: calls.append(a) or [])
    root = tiny["root"]
    out = root / "again"
    began = time.perf_counter()
    code = app([str(root / "tiny.onnx"), "--eps", str(EPS), "--data", str(root / "set.npz"), "--report",
                str(root / "r"), "--distortion", "linf", "--save-examples", str(out)], standalone_mode=False)
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert calls == [] and time.perf_counter() - began < 30
    assert f"examples: {len(tiny['result'].examples)} file(s) in {out}" in printed.out
    first = {p.name: np.load(p) for p in (root / "ex").iterdir()}
    assert sorted(p.name for p in out.iterdir()) == sorted(first)
    for name, old in first.items():
        new = np.load(out / name)
        assert sorted(new.files) == sorted(old.files)
        assert all(np.array_equal(new[k], old[k]) for k in old.files)


def test_table_mode_exports_and_the_old_option_is_not_ignored(tmp_path):
    out = tmp_path / "ex"
    p = subprocess.run([sys.executable, "-m", "verifier.cli", str(WK17A), "--eps", "0.1", "--limit", "10",
                        "--save-examples", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    adversarial = [int(line.split()[0]) for line in p.stdout.splitlines()[1:-2] if line.split()[3] == "adversarial"]
    assert adversarial == [8]  # the known non-robust sample of WK17a at 0.1
    assert sorted(f.name for f in out.iterdir()) == ["sample_00008.npz"]
    f = np.load(out / "sample_00008.npz")
    images, labels = embedded_mnist()
    assert f["perturbed"].shape == f["original"].shape == (1, 28, 28)
    assert np.array_equal(f["original"], images[8].reshape(1, 28, 28)) and int(f["label"]) == labels[8]
    assert np.abs(f["perturbed"].astype(np.float64) - f["original"]).max() <= 0.1 * (1 + 1e-6)
    session = ort.InferenceSession(str(WK17A), providers=["CPUExecutionProvider"])
    assert _fools(session, f["perturbed"], int(labels[8]))
    assert int(f["adversarial_label"]) == _label_of(session, f["perturbed"])[0]
    refused = subprocess.run([sys.executable, "-m", "verifier.cli", str(WK17A), "--report", str(tmp_path / "r"),
                              "--save-example", str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--save-examples" in refused.stderr
    assert not (tmp_path / "r").exists()


def _fake_unknown(folder: Path, indices: list[int]) -> dict[int, dict]:
    """Turn stored rows into unknown ones through the store's API; returns the rows before."""
    store = ResultStore(folder, _meta(folder, "settings"))
    before = {r["index"]: r for r in store.rows(indices)}
    for i in indices:
        store.add({"index": i, "label": before[i]["label"], "prediction": before[i]["prediction"],
                   "verdict": "unknown", "margin_lower": -50.0, "margin_upper": 50.0, "decided_by": "timeout",
                   "solver_status": "time_limit", "time": 0.001}, {})
    store.close()
    return before


def test_rerun_unknown_replaces_only_the_unknown_rows(tmp_path, monkeypatch):
    import verifier.batch.executors as executors

    folder = tmp_path / "r"
    verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=10, executor="serial", progress=False)
    faked = [2, 8, 9]  # robust, adversarial (with its counterexample), robust
    before = _fake_unknown(folder, faked)
    assert before[8]["verdict"] == "adversarial" and before[2]["verdict"] == "robust"
    raw = _raw(folder)
    ran = []
    real = executors.certify_sample
    monkeypatch.setattr(executors, "certify_sample", lambda *a: ran.append(a[2]) or real(*a))
    with pytest.raises(InputError, match=r"options\.timeout: store has 60\.0, this run 120\.0"):
        verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=10, timeout=120, executor="serial")
    with pytest.raises(InputError, match=r"eps: store has 0\.1, this run 0\.2"):
        verifier.certify_dataset(WK17A, eps=0.2, report=folder, limit=10, timeout=120, executor="serial",
                                 rerun_unknown=True)
    result = verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=10, timeout=120, executor="serial",
                                      rerun_unknown=True, progress=False)
    assert sorted(ran) == faked
    after = _raw(folder)
    assert {i: after[i] for i in after if i not in faked} == {i: raw[i] for i in raw if i not in faked}
    rows = {r["index"]: r for r in result.rows}
    for i in faked:
        assert rows[i]["verdict"] == before[i]["verdict"] and rows[i]["adversarial_label"] == before[i]["adversarial_label"]
    session = ort.InferenceSession(str(WK17A), providers=["CPUExecutionProvider"])
    assert _fools(session, rows[8]["counterexample"], before[8]["label"])  # its new counterexample, stored
    assert _meta(folder, "settings")["options"]["timeout"] == 60.0  # the folder keeps its own settings
    [record] = _meta(folder, "reruns")
    assert record["timeout"] == 120.0 and record["indices"] == faked and record["finished"] == 3
    assert record["interrupted"] is False
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["timeout"] == 60.0 and summary["reruns"][0]["timeout"] == 120.0
    assert summary["unknown"] == 0 and summary["adversarial"] == 1
    csv_verdicts = [line.split(",")[3] for line in (folder / "results.csv").read_text().splitlines()[1:]]
    assert csv_verdicts == [rows[i]["verdict"] for i in range(10)]
    ran.clear()
    verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=10, executor="serial", progress=False)
    assert ran == [] and _raw(folder) == after  # the original command still resumes, with nothing to do


def test_rerun_after_a_real_time_out_and_its_refusals(tmp_path):
    folder = tmp_path / "r"
    first = verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=6, timeout=0.001, executor="serial",
                                     progress=False)
    unknown = [r["index"] for r in first.rows if r["verdict"] == "unknown"]
    assert unknown, "a 1 ms timeout must leave samples unknown"
    kept = {i: row for i, row in _raw(folder).items() if i not in unknown}
    again = verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=6, timeout=60, executor="serial",
                                     rerun_unknown=True, progress=False)
    assert again.summary["unknown"] == 0 and again.summary["samples"] == 6
    assert {i: row for i, row in _raw(folder).items() if i in kept} == kept
    with pytest.raises(InputError, match="nothing to rerun"):
        verifier.certify_dataset(WK17A, eps=0.1, report=tmp_path / "new", rerun_unknown=True)
    assert not (tmp_path / "new").exists()
    with pytest.raises(InputError, match="needs the report folder"):
        verifier.certify_dataset(WK17A, eps=0.1, rerun_unknown=True)


def test_a_rerun_still_unknown_keeps_the_tighter_bounds_and_an_error_keeps_the_old_row():
    old = {"index": 3, "verdict": "unknown", "solver_status": "time_limit", "margin_lower": -0.5, "margin_upper": 2.0,
           "counterexample": None, "distortion_example": None}
    new = {"index": 3, "verdict": "unknown", "solver_status": "time_limit", "margin_lower": -0.8, "margin_upper": 1.5}
    row, _ = merged(old, new, {})
    assert (row["margin_lower"], row["margin_upper"]) == (-0.5, 1.5)
    error = {"index": 3, "verdict": "unknown", "solver_status": "error", "decided_by": "error: X"}
    row, arrays = merged(old, error, {})
    assert row["solver_status"] == "time_limit" and row["margin_lower"] == -0.5 and arrays["counterexample"] is None
    decided = {"index": 3, "verdict": "robust", "solver_status": "proved", "margin_lower": 0.1, "margin_upper": 2.0}
    assert merged(old, decided, {"counterexample": None})[0] is decided


def test_a_store_without_the_shape_is_read_flat_and_gets_it_on_the_next_run(tmp_path):
    folder = tmp_path / "r"
    verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=10, executor="serial", progress=False)
    with sqlite3.connect(folder / "results.sqlite") as db:
        db.execute("DELETE FROM meta WHERE key = 'input_shape'")
    store = ResultStore(folder, _meta(folder, "settings"))
    row = store.rows([8])[0]
    assert store.input_shape is None and store.array(row, "counterexample").shape == (784,)
    store.close()
    result = verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=10, executor="serial", progress=False,
                                      save_examples=tmp_path / "ex")
    assert _meta(folder, "input_shape") == [1, 28, 28]
    assert [p.name for p in result.examples] == ["sample_00008.npz"]
    assert np.array_equal(np.load(result.examples[0])["perturbed"], row["counterexample"].reshape(1, 28, 28))


def _parse(text: str) -> list[tuple[int, ...]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    return [tuple(int(g) for g in m.groups()[:5]) + (m.group(7),) for m in parsed]


def test_progress_without_a_terminal_prints_lines_at_the_interval():
    stream = io.StringIO()  # not a terminal
    verdicts = ["robust", "adversarial", "unknown", "robust", "robust"]
    with BatchProgress(6, ["adversarial"], None, interval=0.05, stream=stream) as bar:
        for v in verdicts:
            time.sleep(0.12)
            bar.advance({"verdict": v})
    lines = _parse(stream.getvalue())
    assert len(lines) >= 6  # about two per sample, plus the last
    for done, total, robust, adversarial, unknown, _ in lines:
        assert total == 6 and done == robust + adversarial + unknown and 1 <= done <= 6
    assert [line[0] for line in lines] == sorted(line[0] for line in lines)
    assert lines[-1][:5] == (6, 6, 3, 2, 1) and lines[-1][5] == "0s"
    assert lines[0][5] == "unknown"  # no sample of this run finished yet: no rate to tell


def test_progress_choice_interval_setting_and_a_real_run(monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert BatchProgress(3, [], None, stream=Terminal()).mode == "bar"
    assert BatchProgress(3, [], False, stream=Terminal()).mode == "off"
    assert BatchProgress(3, [], None, stream=io.StringIO()).mode == "log"
    assert progress_interval() == 30.0
    monkeypatch.setenv("VERIFY_PROGRESS_INTERVAL", "0.05")
    assert progress_interval() == 0.05 and progress_interval(2) == 2.0
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("VERIFY_PROGRESS_INTERVAL", bad)
        with pytest.raises(InputError, match="VERIFY_PROGRESS_INTERVAL"):
            verifier.certify_dataset(WK17A, eps=0.1, limit=2, executor="serial")
    monkeypatch.setenv("VERIFY_PROGRESS_INTERVAL", "0.05")
    result = verifier.certify_dataset(WK17A, eps=0.1, limit=10, executor="serial")
    lines = _parse(capsys.readouterr().err)
    s = result.summary
    assert lines[-1][:5] == (10, 10, s["robust"], s["adversarial"], s["unknown"]) and s["adversarial"] == 1
