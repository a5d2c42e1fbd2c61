"""The report of a run at several radii: counts per radius, the eps curve, one line per sample.

Such a run stores one row per (sample, eps). The summary counts each radius apart (robust,
adversarial, unknown, the certified lower bound and the attack upper bound of adversarial
accuracy) and gives the curve's points (`eps_curve`), which report.py draws; samples (accuracy,
misclassified, times) are counted once each. The page's figures and per-sample table take one
merged line per sample (`sample_rows`): its verdict at every radius, its times summed, its
example from the smallest radius it is adversarial at (that example lies within every larger
ball), its margins and the verdict that colours it from the largest radius.
"""

from __future__ import annotations

import html

import numpy as np

from verifier.batch.report_figures import VERDICTS
from verifier.batch.report_format import decided_group, misclassified, number, sample_time, share


def several(summary_or_settings: dict) -> bool:
    """Whether a run's settings (or summary) hold several radii."""
    return isinstance(summary_or_settings.get("eps"), list)


def by_sample(rows: list[dict]) -> list[list[dict]]:
    """Each sample's rows, sorted by eps; samples by index."""
    samples: dict[int, list[dict]] = {}
    for r in rows:
        samples.setdefault(r["index"], []).append(r)
    return [sorted(mine, key=lambda r: r["eps"]) for _, mine in sorted(samples.items())]


def sample_rows(rows: list[dict]) -> list[dict]:
    """One merged row per sample (see the module docstring): `verdicts` and `decided` map each
    radius to the verdict and how it was decided."""
    out = []
    for mine in by_sample(rows):
        line = dict(mine[-1])
        adversarial = next((r for r in mine if r.get("counterexample") is not None), None)
        line["counterexample"] = None if adversarial is None else adversarial["counterexample"]
        line["adversarial_label"] = None if adversarial is None else adversarial["adversarial_label"]
        line["example_eps"] = None if adversarial is None else adversarial["eps"]
        line["time"] = round(sum(float(r.get("time") or 0.0) for r in mine), 4)
        distorted = next((r for r in mine if r.get("distortion_status")), None)
        for key in ("distortion_norm", "distortion_status", "distortion_lower", "distortion_upper",
                    "distortion_label", "distortion_time", "distortion_example"):
            line[key] = None if distorted is None else distorted.get(key)
        line["verdicts"] = {r["eps"]: r["verdict"] for r in mine}
        line["decided"] = {r["eps"]: r.get("decided_by") for r in mine}
        out.append(line)
    return out


def summarise_radii(rows: list[dict], settings: dict, run_info: dict) -> dict:
    """summary.json of a run at several radii (module docstring); `distortion` is report.py's
    distortion block, added by the caller."""
    radii = [float(e) for e in settings["eps"]]
    samples = by_sample(rows)
    n = len(samples)
    share_of = (lambda k: round(k / n, 6)) if n else (lambda k: None)  # noqa: E731
    per_eps, curve = [], []
    for eps in radii:
        verdicts = [r["verdict"] for r in rows if r["eps"] == eps]
        counts = {v: verdicts.count(v) for v in VERDICTS}
        lower, upper = share_of(counts["robust"]), share_of(n - counts["adversarial"])
        per_eps.append({"eps": eps, **counts, "certified_robust_accuracy": lower, "adversarial_accuracy_upper": upper})
        curve.append({"eps": eps, "certified_lower": lower, "attack_upper": upper})
    groups: dict[str, int] = {}
    for r in rows:
        groups[decided_group(r)] = groups.get(decided_group(r), 0) + 1
    per_sample = [sum(sample_time(r) for r in mine) for mine in samples]
    verification = sum(float(r.get("time") or 0.0) for r in rows)
    firsts = [mine[0] for mine in samples]
    correct = sum(r["prediction"] is not None and r["prediction"] == r["label"] for r in firsts)
    return {
        "model": settings["model"], "data": settings["data"], "eps": radii,
        "timeout": settings["options"]["timeout"], "samples": n, "rows": len(rows),
        "misclassified": sum(misclassified(r) for r in firsts),
        "errors": sum(r["solver_status"] == "error" for r in rows),
        "clean_accuracy": share_of(correct),
        "per_eps": per_eps, "eps_curve": curve,
        "decided_by": dict(sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))),
        # Seconds per sample: all its radii, plus the distortion search (when asked).
        "time_total": round(float(np.sum(per_sample)), 3) if per_sample else 0.0,
        "time_verification": round(verification, 3),
        "time_median": round(float(np.median(per_sample)), 4) if per_sample else None,
        "time_max": round(float(np.max(per_sample)), 4) if per_sample else None,
        **run_info,
    }


def summary_lines(s: dict) -> list[tuple[str, str, object, str]]:
    """(id, text, value, css) of the page's summary table for several radii (counts per radius
    are in the per-eps table)."""
    return [("samples", "samples", s["samples"], ""),
            ("misclassified", "misclassified clean samples", s["misclassified"], ""),
            ("clean_accuracy", "clean accuracy", s["clean_accuracy"], ""),
            ("time_total", "time of all samples, every radius + distortion (s)", s.get("time_total"), ""),
            ("time_median", "time per sample, all radii, median (s)", s.get("time_median"), ""),
            ("wall_time", "wall time of this run (s)", s.get("wall_time"), "")]


def per_eps_table(s: dict) -> str:
    """The counts and bounds at each radius, one line per radius."""
    head = ("<tr><th>eps</th><th class='robust'>robust</th><th class='adversarial'>adversarial</th>"
            "<th class='unknown'>unknown</th><th>certified lower bound</th><th>upper bound (attacks)</th></tr>")
    lines = "".join(
        f"<tr><td class='n'>{number(p['eps'])}</td>" + "".join(f"<td class='n'>{p[v]}</td>" for v in VERDICTS)
        + f"<td class='n'>{share(p['certified_robust_accuracy'])}</td>"
        f"<td class='n'>{share(p['adversarial_accuracy_upper'])}</td></tr>" for p in s["per_eps"])
    return f"<table id='eps-curve'>{head}{lines}</table>"


def radii_words(s: dict) -> str:
    """"0.02, 0.05 and 0.1" for the page's prose."""
    words = [html.escape(number(e)) for e in s["eps"]]
    return ", ".join(words[:-1]) + f" and {words[-1]}" if len(words) > 1 else "".join(words)
