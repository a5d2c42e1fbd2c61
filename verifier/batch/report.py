"""The report of a batch run: summary.json, results.csv and a self-contained report.html.

The summary gives what the MIPVerify paper reports per network: clean accuracy, and bounds
on adversarial accuracy — certified robust samples are a lower bound, and all but the proven
adversarial ones an upper bound (unknowns may go either way) — plus how the samples were
decided and where the time went. The HTML page embeds its figures (PNG, matplotlib) and a
sortable per-sample table, so that it can be mailed or archived as one file and opened with
no network. Figures live in report_figures.py, the table in report_table.py, and the words
for values (never a bare `None`) in report_format.py.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from verifier.batch import report_figures as figs
from verifier.batch.report_figures import VERDICTS, image_shape
from verifier.batch.report_format import (DASH, decided_group, misclassified, norm_name, number, sample_time,
                                          seconds, share, workers_of)
from verifier.batch import report_radii as radii
from verifier.batch.report_table import TABLE_CSS, samples_table, thumbnails
from verifier.batch.store import COLUMNS, EPS

MAX_EXAMPLES = 16  # examples drawn per gallery
FIGURES = ("eps_curve", "adversarial_examples", "misclassified", "minimal_examples", "margins", "times")

#: decided_by -> what it means, for the page's table of counts.
STAGES = {"clean": "misclassified without perturbation: the sample itself is the example",
          "attack": "an attack found an example (confirmed by onnxruntime)",
          "bounds": "proven by bound propagation", "lp": "proven by LP tightening",
          "bab": "decided by branch and bound", "input_split": "decided by splitting the input box",
          "mip": "decided by the MIP solver", "timeout": "time ran out; the bounds reached are kept",
          "error": "an internal error in this sample (the message is in results.csv); tried again on resume",
          "implied": "answered by the verdict at another radius: robust at a larger one, or a counterexample "
                     "found at another radius that lies within this one"}


def summarise(rows: list[dict], settings: dict, dataset, run_info: dict) -> dict:
    """summary.json: counts, accuracy bounds, decided_by, times (report_radii.py at several radii)."""
    if radii.several(settings):
        summary = radii.summarise_radii(rows, settings, run_info)
        if settings.get("distortion"):
            summary.update(_distortion_summary(rows, settings))
        return summary
    n = len(rows)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    correct = sum(r["prediction"] is not None and r["prediction"] == r["label"] for r in rows)
    per_sample = [sample_time(r) for r in rows if r.get("time") is not None]
    verification = [r["time"] for r in rows if r.get("time") is not None]
    share_of = (lambda k: round(k / n, 6)) if n else (lambda k: None)  # noqa: E731
    groups: dict[str, int] = {}
    for r in rows:
        groups[decided_group(r)] = groups.get(decided_group(r), 0) + 1
    summary = {
        "model": settings["model"], "data": settings["data"], "eps": settings["eps"],
        "timeout": settings["options"]["timeout"], "samples": n, **counts,
        "misclassified": sum(misclassified(r) for r in rows),
        "errors": sum(r["solver_status"] == "error" for r in rows),
        "clean_accuracy": share_of(correct),
        "certified_robust_accuracy": share_of(counts["robust"]),  # adversarial accuracy, lower bound
        "adversarial_accuracy_upper": share_of(n - counts["adversarial"]),
        "decided_by": dict(sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))),
        # Seconds per sample are verification plus the distortion search (when asked).
        "time_total": round(float(np.sum(per_sample)), 3) if per_sample else 0.0,
        "time_verification": round(float(np.sum(verification)), 3) if verification else 0.0,
        "time_median": round(float(np.median(per_sample)), 4) if per_sample else None,
        "time_max": round(float(np.max(per_sample)), 4) if per_sample else None,
        **run_info,
    }
    if settings.get("distortion"):
        summary.update(_distortion_summary(rows, settings))
    return summary


def _distortion_summary(rows: list[dict], settings: dict) -> dict:
    """time_distortion and the distortion block (rows with a distortion: one per sample)."""
    # A misclassified sample's minimum distortion is 0: it would only pull the median down.
    exact = [r["distortion_upper"] for r in rows if r.get("distortion_status") == "optimal"
             and not misclassified(r) and r.get("distortion_upper") is not None]
    return {"time_distortion": round(float(sum(r.get("distortion_time") or 0.0 for r in rows)), 3),
            "distortion": {
                "norm": settings["distortion"], "eps_max": settings["eps_max"],
                **{s: sum(r.get("distortion_status") == s for r in rows) for s in ("optimal", "infeasible", "unknown")},
                "exact_counted": len(exact),  # proven minimal values of correctly classified samples
                "median_exact": float(np.median(exact)) if exact else None,
                "mean_exact": float(np.mean(exact)) if exact else None}}


def write_report(folder: Path, summary: dict, rows: list[dict], dataset, input_shape) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    several = radii.several(summary)
    with open(folder / "results.csv", "w", newline="") as f:  # several radii: a row per (sample, eps)
        writer = csv.DictWriter(f, fieldnames=[COLUMNS[0], EPS, *COLUMNS[1:]] if several else COLUMNS,
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = radii.sample_rows(rows) if several else rows  # one line per sample
    figures = _figures(summary, lines, dataset, input_shape, folder)
    table = samples_table(lines, thumbnails(lines, dataset.images, input_shape),
                          distortion="distortion" in summary or any(r.get("distortion_status") for r in rows),
                          radii=summary["eps"] if several else None)
    (folder / "report.html").write_text(_html(summary, rows, figures, table, lines), encoding="utf-8")
    return folder


def curve_points(summary: dict) -> list[tuple[float, float, float]]:
    """The eps curve's points: summary["eps_curve"] when the run covered several radii, else
    this run's single point (eps, certified lower bound, upper bound)."""
    if summary.get("eps_curve"):
        return figs.eps_points(summary["eps_curve"])
    return figs.eps_points([(summary.get("eps"), summary.get("certified_robust_accuracy"),
                             summary.get("adversarial_accuracy_upper"))])


def _figures(summary: dict, rows: list[dict], dataset, input_shape, folder: Path) -> dict[str, str]:
    """Name -> base64 PNG; each is also written to the folder (stale ones of a rerun removed)."""
    plt = figs.pyplot()
    out = {}

    def save(name, fig):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        (folder / f"{name}.png").write_bytes(buffer.getvalue())
        out[name] = base64.b64encode(buffer.getvalue()).decode()

    shape = image_shape(input_shape)
    if curve_points(summary):
        save("eps_curve", figs.eps_curve(curve_points(summary)))
    attacks = [r for r in rows if r.get("counterexample") is not None and not misclassified(r)]
    wrong = [r for r in rows if misclassified(r)]
    minimal = [r for r in rows if r.get("distortion_example") is not None and r.get("distortion_upper")
               and not misclassified(r)]
    if shape is not None:
        if attacks:
            save("adversarial_examples", figs.example_grid(attacks[:MAX_EXAMPLES], dataset.images, shape,
                                                           "counterexample", "adversarial_label"))
        if wrong:
            save("misclassified", figs.misclassified_grid(wrong[:MAX_EXAMPLES], dataset.images, shape))
        if minimal:
            save("minimal_examples", figs.example_grid(minimal[:MAX_EXAMPLES], dataset.images, shape,
                                                       "distortion_example", "distortion_label", distortion=True))
    if rows:
        save("margins", figs.distribution(rows))
        save("times", figs.times(rows))
    for name in FIGURES:
        if name not in out:
            (folder / f"{name}.png").unlink(missing_ok=True)
    return out


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#212529}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #dee2e6;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
.robust{color:#2b8a3e}.adversarial{color:#c92a2a}.unknown{color:#868e96}.note{color:#495057}
""" + TABLE_CSS


def _time_account(s: dict) -> str:
    """Where the time went, in numbers that add up: per-sample sums against workers x wall."""
    workers = workers_of(s)
    if s.get("time_median") is None:
        return f"No sample has finished; this run's wall time was {seconds(s.get('wall_time'))} s."
    parts = [f"The samples took <b>{seconds(s.get('time_total'))} s</b> in all"]
    if "time_distortion" in s:
        parts.append(f" (verification {seconds(s.get('time_verification'))} s + minimum distortion "
                     f"{seconds(s['time_distortion'])} s)")
    parts.append(f"; median {seconds(s.get('time_median'))} s per sample, longest {seconds(s.get('time_max'))} s.")
    wall = s.get("wall_time")
    if wall is None:
        return "".join(parts)
    capacity = workers * float(wall)
    used = float(s.get("time_total") or 0.0)
    parts.append(f" This run's wall time was <b>{seconds(wall)} s</b> on {workers} "
                 f"{'process' if workers == 1 else 'parallel workers'}, i.e. {seconds(capacity)} worker-seconds")
    if capacity > 0 and used <= capacity * 1.01:
        parts.append(f", of which the samples used {used / capacity:.0%}; the other "
                     f"{seconds(capacity - used)} s went to starting workers, loading the network, handing out "
                     "samples and storing results (and to idle workers at the end).")
    else:
        parts.append(": less than the samples' total, because some samples were computed by an earlier run "
                     "into this folder (this run resumed it); their times are included in the sums above.")
    return "".join(parts)


def _distortion_text(d: dict, misclassified_count: int) -> str:
    where = "the input domain" if d.get("eps_max") is None else f"the L∞ ball of radius {number(d['eps_max'])}"
    text = (f"Searched within {html.escape(where)}: <b>proven minimal</b> for {d['optimal']} sample(s); no "
            f"adversarial example exists within the search set for {d['infeasible']}; open for {d['unknown']} "
            f"(the smallest example found is reported as <i>best found</i>, with its certified lower bound). ")
    if d.get("median_exact") is None:
        text += "No correctly classified sample's minimum distortion was proven."
    else:
        text += (f"Median of the proven minimal values over {d.get('exact_counted', DASH)} correctly classified "
                 f"sample(s): <b>{number(d['median_exact'])}</b> (mean {number(d.get('mean_exact'))}).")
    if misclassified_count:
        text += (f" The {misclassified_count} misclassified sample(s) need no perturbation (distance 0) and are "
                 "left out of the median, the gallery and the histogram.")
    return text


def _decided_table(s: dict, rows: list[dict]) -> str:
    e = html.escape
    several = radii.several(s)
    head = f"<tr><th>decided by</th><th>{'(sample, eps) pairs' if several else 'samples'}</th>" + "".join(
        f"<th class='{v}'>{v}</th>" for v in VERDICTS) + "<th>meaning</th></tr>"
    lines = []
    for group, count in (s.get("decided_by") or {}).items():
        split = "".join(f"<td class='n'>{sum(decided_group(r) == group and r['verdict'] == v for r in rows)}</td>"
                        for v in VERDICTS)
        lines.append(f"<tr><th>{e(group)}</th><td class='n' id='decided-{e(group)}'>{count}</td>{split}"
                     f"<td class='note'>{e(STAGES.get(group, ''))}</td></tr>")
    title = "How each sample was decided at each radius" if several else "How the samples were decided"
    return f"<h2>{title}</h2><table id='decided'>{head}{''.join(lines)}</table>"


def _eps_table(points) -> str:
    lines = "".join(f"<tr><td class='n'>{number(eps)}</td><td class='n'>{share(lo)}</td><td class='n'>{share(hi)}"
                    f"</td></tr>" for eps, lo, hi in points)
    return ("<table id='eps-curve'><tr><th>eps</th><th>certified lower bound</th><th>upper bound (attacks)</th>"
            f"</tr>{lines}</table>")


def _html(summary: dict, rows: list[dict], figures: dict[str, str], table: str, lines: list[dict]) -> str:
    """The page. `rows`: the stored rows; `lines`: one per sample (the same rows at one radius)."""
    e = html.escape
    several = radii.several(summary)

    def line(key, text, value, css=""):
        shown = DASH if value is None else (share(value) if isinstance(value, float) and "accuracy" in key else value)
        return f'<tr><th class="{css}">{e(text)}</th><td class="n" id="{key}">{e(str(shown))}</td></tr>'

    def figure(name, heading, caption):
        if name not in figures:
            return ""
        return (f"<h2>{e(heading)}</h2><p class='note'>{caption}</p><img id='fig-{name}' alt='{e(heading)}' "
                f"src='data:image/png;base64,{figures[name]}'>")

    s = summary
    workers = workers_of(s)
    how = "one process (serial)" if s.get("executor") == "serial" else f"{workers} worker(s) ({e(str(s.get('executor')))})"
    summary_table = "".join([line(*fields) for fields in radii.summary_lines(s)] if several else [
        line("samples", "samples", s["samples"]),
        line("robust", "robust (certified)", s["robust"], "robust"),
        line("adversarial", "adversarial (example confirmed by onnxruntime; includes misclassified)",
             s["adversarial"], "adversarial"),
        line("unknown", "unknown (time limit, or too close to call)", s["unknown"], "unknown"),
        line("misclassified", "misclassified clean samples", s["misclassified"]),
        line("clean_accuracy", "clean accuracy", s["clean_accuracy"]),
        line("certified_robust_accuracy", "adversarial accuracy, lower bound (certified)", s["certified_robust_accuracy"]),
        line("adversarial_accuracy_upper", "adversarial accuracy, upper bound", s["adversarial_accuracy_upper"]),
        line("time_total", "time of all samples, verification + distortion (s)", s.get("time_total")),
        line("time_median", "time per sample, median (s)", s.get("time_median")),
        line("wall_time", "wall time of this run (s)", s.get("wall_time")),
    ])
    limit = "no time limit" if s.get("timeout") is None else f"{number(s['timeout'])} s per sample"
    stopped = f" — <b>interrupted</b> ({e(str(s.get('stopped_by') or 'stopped'))}), partial results" \
        if s.get("interrupted") else ""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>Certification report: {e(str(s['model']))}</title><style>{_CSS}</style></head><body>",
             f"<h1>Certification report</h1><p>Model <b>{e(str(s['model']))}</b>, data {e(str(s['data']))}, "
             + (f"L∞ radii eps = <b>{radii.radii_words(s)}</b>, {limit} (all radii together)" if several else
                f"L∞ radius eps = <b>{number(s['eps'])}</b>, {limit}") + f", run on {how}"
             f"{stopped}. <a href='#per-sample'>Every sample</a> is in the table at the end.</p>",
             f"<table id='summary'>{summary_table}</table>",
             f"<p id='time-account'>{_time_account(s)}</p>",
             _decided_table(s, rows)]
    points = curve_points(s)
    if "eps_curve" in figures:
        single = "" if len(points) > 1 else " This run has one radius: one point, the band between the bounds."
        parts.append(figure("eps_curve", "Adversarial accuracy against eps",
                            "The certified lower bound (samples proven robust) and the upper bound (all but the "
                            "samples with a confirmed adversarial example); the true adversarial accuracy lies "
                            f"between them.{single}") + ("" if several else _eps_table(points)))
    if several:
        parts.append(radii.per_eps_table(s))
    rows = lines  # from here on, one line per sample
    n_attacks = sum(r.get("counterexample") is not None and not misclassified(r) for r in rows)
    n_wrong = s["misclassified"]
    within = ("each at the smallest radius the sample was found adversarial at (so it lies within every larger "
              "radius too)") if several else f"within eps = {number(s['eps'])}"
    parts.append(figure("adversarial_examples", "Adversarial examples",
                        f"Original, perturbed input (classified as shown) and their difference, with its colour "
                        f"scale; {min(n_attacks, MAX_EXAMPLES)} of {n_attacks} found {within}. "
                        "Misclassified samples are shown apart below."))
    parts.append(figure("misclassified", "Misclassified clean samples",
                        f"The network already gets these wrong with no perturbation; each counts as adversarial "
                        f"with the sample itself as the example. {min(n_wrong, MAX_EXAMPLES)} of {n_wrong} shown."))
    if "distortion" in s:
        d = s["distortion"]
        parts.append(f"<h2>Minimum {e(norm_name(d['norm']))} distortion</h2>"
                     f"<p id='distortion'>{_distortion_text(d, n_wrong)}</p>")
        closed = all(r.get("distortion_status") == "optimal" for r in rows
                     if r.get("distortion_example") is not None and not misclassified(r))
        parts.append(figure("minimal_examples", "Minimal adversarial examples" if closed else
                            "Smallest adversarial examples found",
                            "Original, the closest adversarial example found (its distance d; <i>proven minimal</i> "
                            "when the certified lower bound meets it, otherwise <i>best found</i> with the lower "
                            "bound) and the difference, with its colour scale."))
    distribution = ("proven minimal distortions of correctly classified samples"
                    if any(r.get("distortion_status") == "optimal" and not misclassified(r) for r in rows)
                    else "margin bounds by verdict (robust: proven lower bound; adversarial: margin of the example)")
    at = f", at the largest radius, eps = {number(s['eps'][-1])}" if several and "margin" in distribution else ""
    parts.append(figure("margins", "Distribution", f"The {distribution}{at}."))
    parts.append(figure("times", "Time per sample", "Seconds per sample" + (" (all radii)" if several else "") + (
        ", verification plus distortion search." if "distortion" in s else ", verification.")))
    parts.append(table)
    parts.append("<p>The same rows as a file: <a href='results.csv'>results.csv</a>; the numbers above: "
                 "<a href='summary.json'>summary.json</a>.</p></body></html>")
    return "\n".join(p for p in parts if p)
