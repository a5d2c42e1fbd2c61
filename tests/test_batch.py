"""Batch certification: resume after kill -9, refusal of foreign stores, Ray vs process pool,
the report in a real browser, and the summary against per-sample verification."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import verifier
from verifier import InputError
from verifier.batch.dataset import load_dataset
from verifier.data import embedded_mnist
from tests.nets import mlp_onnx, random_mlp

DATA = Path(__file__).parent / "data"
WK17A = DATA / "wk17a_linf0.1.onnx"
KEY = ["index", "label", "prediction", "verdict", "adversarial_label"]


def _rows(folder: Path) -> list[tuple]:
    with sqlite3.connect(folder / "results.sqlite") as db:
        quoted = ", ".join(f'"{k}"' for k in KEY)
        return db.execute(f'SELECT {quoted} FROM results ORDER BY "index"').fetchall()


def _count(folder: Path) -> int:
    try:
        with sqlite3.connect(folder / "results.sqlite", timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def _cli(*args) -> list[str]:
    return [sys.executable, "-c", "from verifier.cli import main; main()", *map(str, args)]


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """The CLI with a process pool is killed (SIGKILL, workers included) once some samples are
    committed; the rerun finishes the rest. Final store = uninterrupted run, no duplicates."""
    args = [WK17A, "--eps", "0.1", "--limit", "60", "--workers", "2", "--timeout", "30"]
    folder = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args, "--report", folder), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _count(folder) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _count(folder)
    assert 5 <= partial < 60, "the kill must land in the middle of the run"
    rerun = subprocess.run(_cli(*args, "--report", folder, "--json"), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["samples"] == 60
    reference = verifier.certify_dataset(WK17A, eps=0.1, report=tmp_path / "whole", limit=60, timeout=30,
                                         executor="serial")
    assert _rows(folder) == _rows(tmp_path / "whole")
    assert [r[0] for r in _rows(folder)] == list(range(60))  # each sample once
    assert reference.summary["samples"] == 60


def test_other_settings_are_refused_and_the_store_is_untouched(tmp_path):
    folder = tmp_path / "run"
    verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=3, executor="serial")
    before = _rows(folder)
    out = subprocess.run(_cli(WK17A, "--eps", "0.05", "--report", folder, "--limit", "3"), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "eps: store has 0.1, this run 0.05" in out.stderr
    with pytest.raises(InputError, match=r"options\.timeout: store has 60\.0, this run 5\.0\)") as refused:
        verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=3, timeout=5, executor="serial")
    assert len(str(refused.value)) < 250  # the field that differs, not two whole option dicts
    assert _rows(folder) == before


def test_summary_matches_per_sample_verification(tmp_path):
    """A relabelled sample counts as misclassified and adversarial; every verdict equals a
    direct verify() call; the accuracy bounds follow from the counts."""
    images, labels = embedded_mnist()
    images, labels = images[:10].copy(), labels[:10].copy()
    labels[3] = (labels[3] + 1) % 10
    result = verifier.certify_dataset(WK17A, (images * 255).round().astype(np.uint8), labels, eps=0.1,
                                      report=tmp_path / "r", executor="serial")
    net = verifier.load(WK17A)
    for row in result.rows:
        x = np.round(images[row["index"]] * 255) / 255
        direct = verifier.verify(net, x.reshape(net.input_shape), 0.1, label=int(labels[row["index"]]), timeout=60)
        assert row["verdict"] == direct.status.value
    s = result.summary
    assert s["misclassified"] == 1 and s["clean_accuracy"] == 0.9
    assert s["robust"] + s["adversarial"] + s["unknown"] == 10
    assert s["certified_robust_accuracy"] == s["robust"] / 10
    assert s["adversarial_accuracy_upper"] == (10 - s["adversarial"]) / 10
    on_disk = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert on_disk["robust"] == s["robust"]
    lines = (tmp_path / "r" / "results.csv").read_text().splitlines()
    assert len(lines) == 11 and lines[0].startswith("index,label,prediction,verdict,margin_lower")


def test_ray_executor_gives_the_same_results_as_the_process_pool(tmp_path):
    pool = verifier.certify_dataset(WK17A, eps=0.1, report=tmp_path / "pool", limit=10, workers=2)
    ray = verifier.certify_dataset(WK17A, eps=0.1, report=tmp_path / "ray", limit=10, workers=2, executor="ray")
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "pool")
    assert ray.summary["executor"] == "ray" and ray.summary["samples"] == 10
    assert pool.summary["adversarial"] >= 1  # image 9 of MNIST is adversarial at 0.1


def _tiny_image_net() -> bytes:
    """784-8-10 on 28x28 images: fast exact answers, and adversarial examples at small eps."""
    ws, bs = random_mlp(np.random.default_rng(0), [784, 8, 10])
    return mlp_onnx(ws, bs, [1, 1, 28, 28])


def test_report_opens_in_headless_chromium_with_the_summary_numbers(tmp_path):
    model = _tiny_image_net()
    images = embedded_mnist()[0][:10]
    labels = verifier.load(model).forward(images.reshape(10, -1)).argmax(axis=1)
    result = verifier.certify_dataset(model, images, labels, eps=0.02, report=tmp_path / "r", executor="serial",
                                      distortion="linf", timeout=60)
    page = (tmp_path / "r" / "report.html").resolve()
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    s = result.summary
    assert s["robust"] > 0 and s["adversarial"] > 0
    for key in ("samples", "robust", "adversarial", "unknown"):
        assert f'id="{key}">{s[key]}<' in dom
    assert f'id="certified_robust_accuracy">{s["certified_robust_accuracy"]:.2%}<' in dom
    # examples, minimal examples, margins, times, the eps curve; and one thumbnail per sample row
    assert dom.count('id="fig-') == 5 and dom.count('class="thumb"') == s["samples"]
    # The minimum distortion is at most eps exactly for the samples found adversarial at eps.
    for row in result.rows:
        assert row["distortion_status"] == "optimal"
        assert (row["distortion_upper"] <= 0.02 + 1e-6) == (row["verdict"] == "adversarial")


def test_data_sources_and_their_errors(tmp_path):
    images, labels = embedded_mnist()
    np.savez(tmp_path / "set.npz", images=(images[:4] * 255).round().astype(np.uint8), labels=labels[:4])
    from_npz = load_dataset(tmp_path / "set.npz", (1, 28, 28))
    assert np.allclose(from_npz.images, images[:4], atol=1e-12) and list(from_npz.labels) == list(labels[:4])
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(4):
        np.save(folder / f"{i:03d}.npy", images[i])
    np.save(folder / "labels.npy", labels[:4])
    assert load_dataset(folder, (1, 28, 28)).fingerprint == load_dataset(tmp_path / "set.npz", (1, 28, 28)).fingerprint
    np.savez(tmp_path / "nolabels.npz", images=images[:4])
    with pytest.raises(InputError, match="missing array"):
        load_dataset(tmp_path / "nolabels.npz", (1, 28, 28))
    np.savez(tmp_path / "short.npz", images=images[:4], labels=labels[:3])
    with pytest.raises(InputError, match="4 images but labels"):
        load_dataset(tmp_path / "short.npz", (1, 28, 28))
    np.savez(tmp_path / "small.npz", images=np.zeros((2, 5)), labels=np.zeros(2, int))
    with pytest.raises(InputError, match="5 values"):
        verifier.certify_dataset(WK17A, data=tmp_path / "small.npz", report=tmp_path / "x")
    out = subprocess.run(_cli(WK17A, "--data", tmp_path / "none.npz", "--report", tmp_path / "y"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "none.npz: no such file" in out.stderr and "Traceback" not in out.stderr


def test_a_sample_that_failed_is_tried_again_on_resume(tmp_path):
    folder = tmp_path / "r"
    verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=3, executor="serial")
    good = _rows(folder)
    with sqlite3.connect(folder / "results.sqlite") as db:
        db.execute("""UPDATE results SET verdict = 'unknown', solver_status = 'error', decided_by = 'error: X'
                      WHERE "index" = 1""")
    assert _rows(folder) != good
    again = verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=3, executor="serial")
    assert _rows(folder) == good and again.summary["errors"] == 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_end_when_the_run_is_killed_with_sigkill(tmp_path):
    """kill -9 of the run's own process (not its group): its pool workers must not run on."""
    proc = subprocess.Popen(_cli(WK17A, "--eps", "0.1", "--limit", "1000", "--workers", "2", "--report",
                                 tmp_path / "out"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 120
        while _count(tmp_path / "out") < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert len(workers) >= 2 and proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "workers outlived the killed run"
    finally:
        proc.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_default_workers_are_one_per_core_and_one_on_a_gpu():
    import os

    from verifier.batch.executors import default_workers

    assert default_workers("cpu") == len(os.sched_getaffinity(0))
    assert default_workers(None) == default_workers("cpu")
    assert default_workers("cuda") == 1 and default_workers("cuda:1") == 1
