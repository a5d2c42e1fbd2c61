"""Several radii in one run (verifier.verify_radii, `--eps 0.01,0.02`, certify_dataset(eps=[...])):
each radius's verdict against `verify` at that radius alone, implied answers checked by
onnxruntime, monotonicity, the time limit kept over all radii, the CLI's table and JSON, and the
batch: counts per radius against single-radius runs, the eps curve, an old folder resumed."""

import json
import sqlite3
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import onnxruntime as ort
import pytest

import verifier
import verifier.radii as radii_module
from verifier import InputError, Status
from verifier.batch.store import ResultStore
from verifier.cli import main
from verifier.data import embedded_mnist
from verifier.radii import eps_list
from tests.nets import mlp_onnx, random_mlp

WK17A = Path(__file__).parent / "data" / "wk17a_linf0.1.onnx"
#: On the tiny net (784-8-10), the embedded samples go from robust to adversarial in this range.
RADII = [0.0, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """784-8-10 on 28x28 images (exact answers in milliseconds), 12 embedded samples labelled by
    its own predictions, and its ONNX file."""
    root = tmp_path_factory.mktemp("radii")
    ws, bs = random_mlp(np.random.default_rng(0), [784, 8, 10])
    model = mlp_onnx(ws, bs, [1, 1, 28, 28])
    (root / "tiny.onnx").write_bytes(model)
    images = embedded_mnist()[0][:12]
    net = verifier.load(model)
    labels = net.forward(images.reshape(len(images), -1)).argmax(axis=1)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return {"root": root, "model": model, "net": net, "images": images, "labels": labels, "session": session}


def _fools(session, x, label) -> bool:
    """onnxruntime's class for x is not `label` (a tie counts as adversarial)."""
    name = session.get_inputs()[0].name
    logits = session.run(None, {name: np.asarray(x, dtype=np.float32).reshape(1, 1, 28, 28)})[0].ravel()
    others = np.delete(logits, label)
    return others.max() >= logits[label]


def _within(point, x, eps) -> bool:
    """point lies in the L-infinity ball of radius eps around x and in [0, 1] (the box computed
    in float64 as x -/+ eps, as the ball is defined)."""
    point, x = np.asarray(point, dtype=np.float64).ravel(), np.asarray(x, dtype=np.float64).ravel()
    return bool(np.all(point >= np.maximum(x - eps, 0.0)) and np.all(point <= np.minimum(x + eps, 1.0)))


def test_eps_lists_are_sorted_deduplicated_and_checked():
    assert eps_list("0.1, 0.02,0.1,0") == [0.0, 0.02, 0.1]
    assert eps_list([0.05, 0.01]) == [0.01, 0.05] and eps_list(0.1) == [0.1] and eps_list(-0.0) == [0.0]
    for bad, needle in [("0.1,abc", "'abc'"), ("0.1,,0.2", "0.1,,0.2"), ([0.1, -0.2], "-0.2"),
                        ("0.1,nan", "nan"), ([0.1, float("inf")], "inf"), ([], "no values"), ([True], "True")]:
        with pytest.raises(InputError, match=needle):
            eps_list(bad, "--eps")
    net = verifier.load(WK17A)
    with pytest.raises(InputError, match="verify_radii"):
        verifier.verify(net, np.zeros(784), [0.1, 0.2])


def test_each_radius_agrees_with_verify_alone_and_implied_answers_hold(tiny):
    """Every radius of every sample: decided verdicts equal `verify` at that radius alone; an
    implied adversarial answer's example lies in that ball and domain and fools onnxruntime; an
    implied robust answer comes from a larger radius proven robust; robust never lies above an
    adversarial radius; and the implications saved calls."""
    net, session = tiny["net"], tiny["session"]
    implied = {"robust": 0, "adversarial": 0}
    calls, per_sample = [], []
    real = radii_module.verify
    with mock.patch.object(radii_module, "verify", lambda *a, **k: calls.append(a[2]) or real(*a, **k)):
        for i, x in enumerate(tiny["images"]):
            label = int(tiny["labels"][i])
            before = len(calls)
            rr = verifier.verify_radii(net, x, RADII, label=label, timeout=30)
            per_sample.append(len(calls) - before)
            assert rr.eps == RADII and rr.label == label and len(rr.results) == len(RADII)
            verdicts = [r.status for r in rr.results]
            for eps, r in rr:
                alone = verifier.verify(net, x, eps, label=label, timeout=30)
                if Status.UNKNOWN not in (alone.status, r.status):
                    assert r.status == alone.status, (i, eps)
                assert r.margin_lower <= alone.margin_upper + 1e-9 and alone.margin_lower <= r.margin_upper + 1e-9
                if r.status == Status.ADVERSARIAL:
                    ce = np.asarray(r.counterexample, dtype=np.float64)
                    assert _within(ce, x, eps)
                    assert _fools(session, ce, label)
                if r.decided_by.startswith("implied by eps="):
                    source = r.stats["implied_by"]
                    assert r.decided_by == f"implied by eps={source:g}" and r.time == 0.0
                    origin = rr.at(source)
                    assert origin.status == r.status and not origin.decided_by.startswith("implied")
                    if r.status == Status.ROBUST:
                        assert source > eps
                    implied[r.status.value] += 1
            first_adversarial = verdicts.index(Status.ADVERSARIAL) if Status.ADVERSARIAL in verdicts else len(RADII)
            assert Status.ROBUST not in verdicts[first_adversarial:], (i, verdicts)
            assert rr.time >= sum(r.time for r in rr.results) - 1e-6
    assert implied["robust"] > 0 and implied["adversarial"] > 0
    # Every radius decided, so no second pass: the largest, the guessed flip, the smallest, then
    # bisection over the k - 3 left.
    assert max(per_sample) <= 4 + int(np.log2(len(RADII) - 3))


def test_one_call_when_the_largest_radius_is_robust_or_the_sample_misclassified(tiny):
    net, x = tiny["net"], tiny["images"][0]
    label = int(tiny["labels"][0])
    calls = []
    real = radii_module.verify
    with mock.patch.object(radii_module, "verify", lambda *a, **k: calls.append(a[2]) or real(*a, **k)):
        robust = verifier.verify_radii(net, x, [0.0005, 0.001, 0.002], label=label)
        assert [r.status for r in robust.results] == [Status.ROBUST] * 3 and calls == [0.002]
        wrong = verifier.verify_radii(net, x, "0.001,0.002", label=(label + 1) % 10)
        assert calls == [0.002, 0.002] and wrong.results[0].decided_by == "implied by eps=0.002"
        assert [r.status for r in wrong.results] == [Status.ADVERSARIAL] * 2 and wrong.example()[0] == 0.001


def test_the_time_limit_covers_every_radius_and_the_hard_one_gets_the_rest():
    """WK17a image 0: proven robust at 0.02 and 0.1 by bounds, open at 0.15 (branch and bound
    runs to the limit); all three within the one timeout, most of it spent on 0.15."""
    net = verifier.load(WK17A)
    x = embedded_mnist()[0][0]
    timeout = 3.0
    began = time.perf_counter()
    rr = verifier.verify_radii(net, x, [0.02, 0.1, 0.15], timeout=timeout)
    wall = time.perf_counter() - began
    assert wall <= timeout + 2.0 and rr.time <= timeout + 2.0  # verify's own promise: + max(5%, 2 s)
    assert rr.at(0.02).status == rr.at(0.1).status == Status.ROBUST
    if rr.at(0.15).status == Status.UNKNOWN:
        assert rr.at(0.15).time > 0.7 * timeout
    alone = verifier.verify(net, x, 0.15, timeout=timeout)
    if Status.UNKNOWN not in (alone.status, rr.at(0.15).status):
        assert alone.status == rr.at(0.15).status


def cli(capsys, *args) -> tuple[int, str, str]:
    with mock.patch.object(sys, "argv", ["verify", *map(str, args)]), pytest.raises(SystemExit) as stop:
        main()
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def test_cli_table_json_and_single_sample(tiny, capsys, tmp_path):
    net = verifier.load(WK17A)
    images, labels = embedded_mnist()
    code, out, err = cli(capsys, WK17A, "--eps", "0.1,0.02,0.05", "--limit", "10", "--timeout", "30")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["index", "label", "pred", "eps=0.02", "eps=0.05", "eps=0.1", "time_s"]
    table = [line.split() for line in lines[1:-1]]
    assert [int(r[0]) for r in table] == list(range(10))
    for row in table:
        i = int(row[0])
        for eps, word in zip([0.02, 0.05, 0.1], row[3:6]):
            alone = verifier.verify(net, images[i].reshape(1, 28, 28), eps, label=int(labels[i]), timeout=30)
            assert word == alone.status.value, (i, eps)
    counts = {eps: [r[3 + k] for r in table] for k, eps in enumerate(["0.02", "0.05", "0.1"])}
    for eps, words in counts.items():
        assert (f"eps={eps}: {words.count('robust')} robust, {words.count('adversarial')} adversarial, "
                f"{words.count('unknown')} unknown") in lines[-1]
    code, out, err = cli(capsys, WK17A, "--eps", "0.02,0.1", "--limit", "10", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["summary"]["eps"] == [0.02, 0.1] and len(data["results"]) == 10
    for sample, row in zip(data["results"], table):
        assert [r["eps"] for r in sample["radii"]] == [0.02, 0.1]
        assert [r["status"] for r in sample["radii"]] == [row[3], row[5]]
    assert data["summary"]["per_eps"][1]["adversarial"] == [row[5] for row in table].count("adversarial")
    # One sample: a JSON object with its list of radii, and the smallest radius's example saved.
    label = int(tiny["labels"][2])
    np.save(tmp_path / "x.npy", tiny["images"][2])
    code, out, err = cli(capsys, tiny["root"] / "tiny.onnx", "--input", tmp_path / "x.npy", "--label", label,
                         "--eps", "0.05,0.002,0.01", "--json", "--save-example", tmp_path / "adv.npy")
    assert code == 0, err
    one = json.loads(out)
    assert [r["eps"] for r in one["radii"]] == [0.002, 0.01, 0.05] and one["label"] == label
    smallest = next(r["eps"] for r in one["radii"] if r["status"] == "adversarial")
    example = np.load(tmp_path / "adv.npy")
    assert _within(example, tiny["images"][2], smallest)
    assert _fools(tiny["session"], example, label)


@pytest.mark.parametrize("args,needle", [
    (["--eps", "0.1,abc"], "--eps: 'abc' is not a number (expected e.g. 0.01,0.02)"),
    (["--eps", "0.1,-0.5"], "--eps must be a finite number >= 0, got -0.5"),
    (["--eps", "0.1,0.2", "--vnnlib", "prop.vnnlib"], "several radii do not apply to --vnnlib"),
    (["--eps", "0.1,0.2", "--distortion", "linf"], "several radii do not apply to --distortion"),
])
def test_bad_eps_lists_are_one_line(capsys, args, needle):
    code, out, err = cli(capsys, WK17A, *args)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_config_takes_the_list_forms_and_run_toml_repeats_them(tiny, capsys, tmp_path):
    np.savez(tmp_path / "d.npz", images=tiny["images"][:4], labels=tiny["labels"][:4])
    for value in ("[0.02, 0.005]", '"0.005,0.02"'):
        (tmp_path / "c.toml").write_text(f'eps = {value}\nexecutor = "serial"\njson = true\n')
        code, out, err = cli(capsys, tiny["root"] / "tiny.onnx", "--config", tmp_path / "c.toml", "--data",
                             tmp_path / "d.npz", "--report", tmp_path / "r")
        assert code == 0, err
        assert json.loads(out)["eps"] == [0.005, 0.02]
    assert "eps = [0.005, 0.02]" in (tmp_path / "r" / "run.toml").read_text()
    (tmp_path / "bad.toml").write_text('eps = [0.1, "a"]\n')
    code, out, err = cli(capsys, tiny["root"] / "tiny.onnx", "--config", tmp_path / "bad.toml")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'bad.toml'}: eps must be a number, a list of numbers" in err


def _verdicts(rows) -> dict:
    return {(r["index"], r["eps"]): r["verdict"] for r in rows}


def test_batch_counts_per_eps_equal_single_runs_and_the_curve(tiny, tmp_path):
    radii = [0.005, 0.01, 0.02]
    images, labels = tiny["images"], tiny["labels"].copy()
    labels[5] = (labels[5] + 1) % 10  # one misclassified sample: adversarial at every radius
    several = verifier.certify_dataset(tiny["model"], images, labels, eps=radii, report=tmp_path / "all",
                                       executor="serial", distortion="linf", save_examples=tmp_path / "ex",
                                       progress=False)
    s = several.summary
    assert s["eps"] == radii and s["samples"] == 12 and s["rows"] == 36 and s["misclassified"] == 1
    for k, eps in enumerate(radii):
        alone = verifier.certify_dataset(tiny["model"], images, labels, eps=eps, executor="serial", progress=False)
        mine = s["per_eps"][k]
        assert mine["eps"] == eps
        for key in ("robust", "adversarial", "unknown", "certified_robust_accuracy", "adversarial_accuracy_upper"):
            assert mine[key] == alone.summary[key], (eps, key)
        assert s["eps_curve"][k] == {"eps": eps, "certified_lower": pytest.approx(mine["robust"] / 12, abs=1e-6),
                                     "attack_upper": pytest.approx((12 - mine["adversarial"]) / 12, abs=1e-6)}
        assert {i: v for (i, e), v in _verdicts(several.rows).items() if e == eps} == \
               {r["index"]: r["verdict"] for r in alone.rows}
    on_disk = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert on_disk["eps_curve"] == s["eps_curve"] and on_disk["per_eps"] == s["per_eps"]
    # The minimum distortion, computed once per sample, agrees with the verdict at every radius.
    for mine in [[r for r in several.rows if r["index"] == i] for i in range(12)]:
        assert sum(r["distortion_status"] is not None for r in mine) == 1
        d = next(r for r in mine if r["distortion_status"] is not None)
        if d["distortion_status"] == "optimal":
            for r in mine:
                assert (r["verdict"] == "adversarial") == (d["distortion_upper"] <= r["eps"] + 1e-6)
    csv = (tmp_path / "all" / "results.csv").read_text().splitlines()
    assert csv[0].startswith("index,eps,label,prediction,verdict") and len(csv) == 37
    page = (tmp_path / "all" / "report.html").read_text(encoding="utf-8")
    assert "fig-eps_curve" in page and "id='eps-curve'" in page
    assert all(f">eps={e:g}</button>" in page for e in radii) and page.count('class="thumb"') == 12
    # One example file per sample with one: the smallest adversarial radius's, inside that ball.
    for path in several.examples:
        f = np.load(path)
        i = int(f["index"])
        if "perturbed" in f.files:
            smallest = min(r["eps"] for r in several.rows if r["index"] == i and r["verdict"] == "adversarial")
            assert float(f["eps"]) == smallest
            assert _within(f["perturbed"], f["original"], smallest)
            assert _fools(tiny["session"], f["perturbed"], int(f["label"]))


def test_rerun_of_a_several_radii_folder_replaces_only_unknown_rows(tiny, tmp_path):
    folder = tmp_path / "r"
    radii = [0.005, 0.02]
    first = verifier.certify_dataset(tiny["model"], tiny["images"], tiny["labels"], eps=radii, report=folder,
                                     executor="serial", progress=False)
    truth = _verdicts(first.rows)
    store = ResultStore(folder, json.loads(_meta(folder)))
    faked = [(2, 0.02), (3, 0.005)]
    for i, eps in faked:
        store.add({"index": i, "eps": eps, "label": int(tiny["labels"][i]), "prediction": int(tiny["labels"][i]),
                   "verdict": "unknown", "decided_by": "timeout", "solver_status": "time_limit", "time": 0.001}, {})
    store.close()
    kept = {k: v for k, v in _raw(folder).items() if k not in faked}
    again = verifier.certify_dataset(tiny["model"], tiny["images"], tiny["labels"], eps=radii, report=folder,
                                     executor="serial", progress=False, rerun_unknown=True, timeout=30)
    assert _verdicts(again.rows) == truth
    assert {k: v for k, v in _raw(folder).items() if k not in faked} == kept  # decided rows untouched
    assert again.summary["reruns"][0]["samples"] == 2


def _meta(folder: Path) -> str:
    with sqlite3.connect(folder / "results.sqlite") as db:
        return db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0]


def _raw(folder: Path) -> dict:
    with sqlite3.connect(folder / "results.sqlite") as db:
        return {(r[0], r[-1]): r for r in db.execute('SELECT * FROM results')}


#: The results table of stores made before the eps column (one row per sample).
OLD_TABLE = ('CREATE TABLE results ("index" INTEGER PRIMARY KEY, "label" INTEGER, "prediction" INTEGER, '
             '"verdict" TEXT, "margin_lower" REAL, "margin_upper" REAL, "adversarial_label" INTEGER, '
             '"decided_by" TEXT, "solver_status" TEXT, "time" REAL, "distortion_norm" TEXT, "distortion_status" TEXT, '
             '"distortion_lower" REAL, "distortion_upper" REAL, "distortion_label" INTEGER, "distortion_time" REAL, '
             '"counterexample" BLOB, "distortion_example" BLOB)')


def test_an_old_single_eps_folder_resumes(tmp_path):
    """A folder in the layout before the eps column, interrupted after 4 of 6 samples: the same
    command adds the eps column (filled from the settings), keeps the 4 rows, computes the 2
    others, and ends equal to an uninterrupted run."""
    folder = tmp_path / "old"
    whole = verifier.certify_dataset(WK17A, eps=0.1, report=tmp_path / "whole", limit=6, executor="serial",
                                     progress=False)
    verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=6, executor="serial", progress=False)
    columns = "label, prediction, verdict, margin_lower, margin_upper, adversarial_label, decided_by, " \
              "solver_status, time, distortion_norm, distortion_status, distortion_lower, distortion_upper, " \
              "distortion_label, distortion_time, counterexample, distortion_example"
    with sqlite3.connect(folder / "results.sqlite") as db:
        db.execute("ALTER TABLE results RENAME TO new_layout")
        db.execute(OLD_TABLE)
        db.execute(f'INSERT INTO results SELECT "index", {columns} FROM new_layout WHERE "index" < 4')
        db.execute("DROP TABLE new_layout")
        old = {r[0]: r for r in db.execute("SELECT * FROM results")}
    resumed = verifier.certify_dataset(WK17A, eps=0.1, report=folder, limit=6, executor="serial", progress=False)
    with sqlite3.connect(folder / "results.sqlite") as db:
        names = [r[1] for r in db.execute("PRAGMA table_info(results)")]
        rows = {r[0]: r for r in db.execute("SELECT * FROM results")}
    assert names[-1] == "eps" and sorted(rows) == list(range(6))
    assert all(rows[i][:-1] == old[i] and rows[i][-1] == 0.1 for i in old)
    key = ["index", "verdict", "adversarial_label", "decided_by"]
    assert [[r[k] for k in key] for r in resumed.rows] == [[r[k] for k in key] for r in whole.rows]
    assert resumed.summary["samples"] == 6 and "eps_curve" not in resumed.summary


#: Appended to a copy of a several-radii report.html: filters by verdict and by decided_by, reports.
PROBE = """<script>
window.addEventListener("load", function () {
  var verdict = document.getElementById("filter-verdict"), decided = document.getElementById("filter-decided");
  function shown() { return Array.prototype.filter.call(document.getElementById("sample-table").tBodies[0].rows,
    function (r) { return !r.hidden; }).map(function (r) { return Number(r.cells[0].textContent); }); }
  var out = {};
  verdict.value = "adversarial"; verdict.dispatchEvent(new Event("change")); out.adversarial = shown();
  verdict.value = ""; decided.value = "implied"; decided.dispatchEvent(new Event("change")); out.implied = shown();
  var pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_the_report_page_filters_a_sample_by_its_verdict_at_any_radius(tiny, tmp_path):
    import html
    import re
    import shutil
    import subprocess

    radii = [0.002, 0.01, 0.05]
    result = verifier.certify_dataset(tiny["model"], tiny["images"], tiny["labels"], eps=radii,
                                      report=tmp_path / "r", executor="serial", progress=False)
    page = tmp_path / "r" / "report.html"
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                           probe.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-500:]
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["adversarial"] == sorted({r["index"] for r in result.rows if r["verdict"] == "adversarial"})
    assert seen["implied"] == sorted({r["index"] for r in result.rows if r["decided_by"].startswith("implied")})
    assert 0 < len(seen["adversarial"]) and 0 < len(seen["implied"]) < 12
