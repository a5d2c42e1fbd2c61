"""The batch report page in a real browser: the per-sample table sorts and filters, every
figure and thumbnail loads, the counts equal summary.json's, misclassified samples are kept
apart, the wording is honest, times add up, the eps curve is drawn, and 1,000 rows stay small.

The browser loads a test-only copy of report.html with a script appended that clicks, filters
and writes what it sees into the DOM (dumped by --dump-dom), so the product page has no hooks.
"""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import verifier
from verifier.batch import report as report_module
from verifier.batch.dataset import as_dataset
from verifier.batch.report import summarise, write_report
from verifier.data import embedded_mnist
from tests.nets import mlp_onnx, random_mlp

# Appended to a copy of the page: acts like a user once everything has loaded, then reports.
PROBE = """<script>
window.addEventListener("load", function () {
  var out = {}, table = document.getElementById("sample-table");
  function th(name) {
    return Array.prototype.filter.call(table.tHead.rows[0].cells, function (h) {
      return h.textContent.trim() === name; })[0];
  }
  function visible(col) {
    return Array.prototype.filter.call(table.tBodies[0].rows, function (r) { return !r.hidden; })
      .map(function (r) { return r.cells[col].textContent.trim(); });
  }
  out.images = Array.prototype.map.call(document.images, function (i) {
    return [i.id || i.alt, i.complete, i.naturalWidth]; });
  var margin = th("margin lower");
  margin.querySelector("button").click();
  out.ascending = {index: visible(0), sort: margin.getAttribute("aria-sort")};
  margin.querySelector("button").click();
  out.descending = {index: visible(0), sort: margin.getAttribute("aria-sort")};
  var verdict = document.getElementById("filter-verdict"), decided = document.getElementById("filter-decided");
  verdict.value = "adversarial"; verdict.dispatchEvent(new Event("change"));
  out.adversarial = {index: visible(0), shown: document.getElementById("shown-count").textContent};
  verdict.value = ""; verdict.dispatchEvent(new Event("change"));
  decided.value = "clean"; decided.dispatchEvent(new Event("change"));
  out.clean = {index: visible(0), shown: document.getElementById("shown-count").textContent};
  decided.value = ""; decided.dispatchEvent(new Event("change"));
  out.all = document.getElementById("shown-count").textContent;
  out.counts = {};
  document.querySelectorAll("#summary td, #decided td[id]").forEach(function (c) {
    out.counts[c.id] = c.textContent; });
  var ids = Array.prototype.map.call(document.querySelectorAll("[id]"), function (x) { return x.id; });
  out.duplicate_ids = ids.filter(function (id, k) { return ids.indexOf(id) !== k; });
  out.text = document.body.innerText;
  var pre = document.createElement("pre");
  pre.id = "probe-result";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _browse(page: Path, tmp_path: Path) -> dict:
    """What PROBE saw in headless Chromium on a copy of `page`."""
    browser = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if browser is None:
        pytest.fail("chromium is not installed; this test needs a headless browser (Debian: apt-get install chromium)")
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
         probe.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not run in chromium (exit {done.returncode}): {done.stderr[-500:]}"
    return json.loads(html.unescape(found.group(1)))


def _tiny_net() -> bytes:
    """784-8-10 on 28x28 images: exact answers in milliseconds, adversarial examples at eps 0.02."""
    ws, bs = random_mlp(np.random.default_rng(0), [784, 8, 10])
    return mlp_onnx(ws, bs, [1, 1, 28, 28])


def _no_python_words(text: str) -> None:
    for word in ("None", "nan", "NaN", "null", "undefined", "inf"):
        assert not re.search(rf"\b{word}\b", text), f"the page shows {word!r}"


def test_table_sorts_filters_and_the_page_matches_summary_json(tmp_path):
    model = _tiny_net()
    images = embedded_mnist()[0][:12]
    labels = verifier.load(model).forward(images.reshape(12, -1)).argmax(axis=1)
    labels[[2, 7]] = (labels[[2, 7]] + 1) % 10  # two samples the network gets wrong
    result = verifier.certify_dataset(model, images, labels, eps=0.02, report=tmp_path / "r", executor="serial",
                                      distortion="linf", timeout=60, progress=False)
    rows, folder = result.rows, tmp_path / "r"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["robust"] > 0 and summary["adversarial"] > summary["misclassified"] == 2
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://", page), "the page must need no network"

    seen = _browse(folder / "report.html", tmp_path)

    assert seen["duplicate_ids"] == []
    # Every figure and every thumbnail has loaded; thumbnails are one per sample.
    assert seen["images"] and all(complete and width > 0 for _, complete, width in seen["images"]), seen["images"]
    names = [name for name, _, _ in seen["images"]]
    for figure in ("fig-eps_curve", "fig-adversarial_examples", "fig-misclassified", "fig-minimal_examples",
                   "fig-margins", "fig-times"):
        assert figure in names
    assert sum(name.startswith("sample ") for name in names) == len(rows)

    # Sorting by the margin's lower bound: numeric order, missing values (misclassified) last.
    def by_margin(reverse):
        known = sorted((r for r in rows if r["margin_lower"] is not None), key=lambda r: r["margin_lower"],
                       reverse=reverse)
        return [r["margin_lower"] for r in known]

    margin_of = {str(r["index"]): r["margin_lower"] for r in rows}
    for order, reverse in (("ascending", False), ("descending", True)):
        shown = [margin_of[i] for i in seen[order]["index"]]
        assert seen[order]["sort"] == order
        assert shown[:len(by_margin(reverse))] == by_margin(reverse)
        assert all(m is None for m in shown[len(by_margin(reverse)):]) and len(shown) == len(rows)
    assert by_margin(False) != by_margin(True)  # the click really changed the order

    # Filters show exactly the rows of that verdict / of that way of deciding, and count them.
    adversarial = [str(r["index"]) for r in rows if r["verdict"] == "adversarial"]
    assert sorted(seen["adversarial"]["index"], key=int) == adversarial
    assert seen["adversarial"]["shown"] == str(len(adversarial))
    assert sorted(seen["clean"]["index"], key=int) == ["2", "7"] and seen["clean"]["shown"] == "2"
    assert seen["all"] == str(len(rows))

    # The page's counts are summary.json's.
    for key in ("samples", "robust", "adversarial", "unknown", "misclassified"):
        assert seen["counts"][key] == str(summary[key])
    assert seen["counts"]["certified_robust_accuracy"] == f"{summary['certified_robust_accuracy']:.2%}"
    assert summary["decided_by"] and sum(summary["decided_by"].values()) == summary["samples"]
    for group, count in summary["decided_by"].items():
        assert seen["counts"][f"decided-{group}"] == str(count)
        assert count == sum((r["decided_by"] or "") == group for r in rows)

    # Times add up: sample time = verification + distortion, within one process's wall time.
    total = sum(r["time"] + r["distortion_time"] for r in rows)
    assert summary["time_total"] == pytest.approx(total, abs=2e-3)
    assert summary["time_distortion"] > 0 and summary["time_total"] <= summary["wall_time"] + 0.01
    assert f"wall time was {summary['wall_time']:.3g} s on 1 process" in seen["text"]
    _no_python_words(seen["text"])


def _hand_made(distortion_status: str) -> tuple[list[dict], dict, object]:
    """Eight MNIST rows by hand: robust, two attacks, one misclassified, one unknown."""
    images, labels = embedded_mnist()
    images, labels = images[:8], labels[:8].astype(int)
    rows = []
    for i in range(8):
        verdict = ["robust", "adversarial", "adversarial", "adversarial", "unknown"][i % 5]
        prediction = int(labels[i]) if i != 3 else int(labels[i] + 1) % 10
        example = None
        if verdict == "adversarial":
            example = np.clip(images[i].ravel() + 0.03 * np.sign(np.sin(np.arange(784) + i)), 0, 1).astype(np.float32)
        rows.append({"index": i, "label": int(labels[i]), "prediction": prediction, "verdict": verdict,
                     "margin_lower": None if verdict != "robust" else 0.5 + i, "margin_upper": 2.0 - i,
                     "adversarial_label": 3 if example is not None else None,
                     "decided_by": {"robust": "bounds", "adversarial": "clean" if i == 3 else "attack",
                                    "unknown": "timeout"}[verdict], "solver_status": "x", "time": 0.5,
                     "distortion_norm": "linf", "distortion_status": distortion_status,
                     "distortion_lower": 0.01 if example is not None else None,
                     "distortion_upper": 0.03 if example is not None else None, "distortion_label": 3,
                     "distortion_time": 1.0, "counterexample": example, "distortion_example": example})
    settings = {"model": "hand.onnx", "data": "mnist", "eps": 0.03, "options": {"timeout": 10.0},
                "distortion": "linf", "eps_max": None}
    run = {"workers": 2, "executor": "process", "wall_time": 7.0, "requested": 8, "interrupted": False,
           "stopped_by": None}
    return rows, summarise(rows, settings, None, run), as_dataset(images, labels)


def test_eps_curve_honest_wording_and_misclassified_apart(tmp_path, monkeypatch):
    rows, summary, dataset = _hand_made("unknown")
    summary["eps_curve"] = [{"eps": 0.01, "certified_lower": 0.9, "attack_upper": 0.95},
                            [0.03, 0.5, 0.7], {"eps": 0.02, "certified_lower": 0.8, "attack_upper": 0.85}]
    galleries = {}
    real_grid = report_module.figs.example_grid
    real_wrong = report_module.figs.misclassified_grid

    def grid(chosen, *args, **kwargs):
        galleries[args[2]] = [r["index"] for r in chosen]
        return real_grid(chosen, *args, **kwargs)

    def wrong(chosen, *args):
        galleries["misclassified"] = [r["index"] for r in chosen]
        return real_wrong(chosen, *args)

    monkeypatch.setattr(report_module.figs, "example_grid", grid)
    monkeypatch.setattr(report_module.figs, "misclassified_grid", wrong)
    write_report(tmp_path / "r", summary, rows, dataset, (1, 28, 28))

    # The misclassified sample 3 has its own tagged gallery, never the attacks' or the distortions'.
    assert galleries == {"counterexample": [1, 2, 6, 7], "misclassified": [3], "distortion_example": [1, 2, 6, 7]}
    seen = _browse(tmp_path / "r" / "report.html", tmp_path)
    assert all(width > 0 for _, _, width in seen["images"])
    text = seen["text"]
    # The curve's points, sorted by eps, in a table under the figure.
    assert re.search(r"0\.01\s+90\.00%\s+95\.00%\s+0\.02\s+80\.00%\s+85\.00%\s+0\.03\s+50\.00%\s+70\.00%", text)
    # Unproven distortions are "best found" with their lower bound, never "minimal" examples.
    assert "Smallest adversarial examples found" in text and "Minimal adversarial examples" not in text
    assert "No correctly classified sample's minimum distortion was proven" in text
    assert "best found" in text
    # 8 samples x (0.5 + 1.0) s on 2 workers in 7 s of wall time: 12 of 14 worker-seconds.
    assert summary["time_total"] == 12.0 and "of which the samples used 86%" in text
    _no_python_words(text)


def test_single_eps_point_and_the_proven_wording(tmp_path):
    rows, summary, dataset = _hand_made("optimal")
    write_report(tmp_path / "r", summary, rows, dataset, (1, 28, 28))
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "fig-eps_curve" in page and (tmp_path / "r" / "eps_curve.png").stat().st_size > 0
    assert "<td class='n'>0.03</td><td class='n'>25.00%</td><td class='n'>37.50%</td>" in page  # 2 robust, 5 adversarial
    assert "Minimal adversarial examples" in page and "Smallest adversarial examples found" not in page
    assert summary["distortion"]["exact_counted"] == 4  # the misclassified sample's 0 is left out


def test_a_thousand_mnist_rows_stay_under_3_mb(tmp_path):
    images, labels = embedded_mnist()
    rows = [{"index": i, "label": int(labels[i]), "prediction": int(labels[i]), "verdict": "robust",
             "margin_lower": 0.1 * i, "margin_upper": 0.2 * i, "adversarial_label": None, "decided_by": "bounds",
             "solver_status": "proved", "time": 1.0, "distortion_norm": "linf", "distortion_status": "optimal",
             "distortion_lower": 0.05, "distortion_upper": 0.05, "distortion_label": 1, "distortion_time": 2.0,
             "counterexample": None, "distortion_example": None} for i in range(len(labels))]
    settings = {"model": "m.onnx", "data": "mnist", "eps": 0.1, "options": {"timeout": 60.0}, "distortion": "linf",
                "eps_max": 0.3}
    summary = summarise(rows, settings, None, {"workers": 2, "executor": "process", "wall_time": 1600.0})
    write_report(tmp_path / "r", summary, rows, as_dataset(images, labels), (1, 28, 28))
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert len(rows) == 1000 and page.count('class="thumb"') == 1000
    assert len(page.encode()) < 3_000_000
