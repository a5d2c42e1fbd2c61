"""The report of a batch run: summary.json, results.csv and a self-contained report.html.

The summary gives what the MIPVerify paper reports per network: clean accuracy, and bounds
on adversarial accuracy — certified robust samples are a lower bound, and all but the proven
adversarial ones an upper bound (unknowns may go either way). The HTML page embeds its figures
(PNG, matplotlib) so that it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from verifier.batch.store import COLUMNS

VERDICTS = ("robust", "adversarial", "unknown")
COLOURS = {"robust": "#2b8a3e", "adversarial": "#c92a2a", "unknown": "#868e96"}
MAX_EXAMPLES = 16  # adversarial examples drawn in the grid


def summarise(rows: list[dict], settings: dict, dataset, run_info: dict) -> dict:
    n = len(rows)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    correct = sum(r["prediction"] is not None and r["prediction"] == r["label"] for r in rows)
    times = [r["time"] for r in rows if r["time"] is not None]
    share = (lambda k: round(k / n, 6)) if n else (lambda k: None)  # noqa: E731
    summary = {
        "model": settings["model"], "data": settings["data"], "eps": settings["eps"],
        "timeout": settings["options"]["timeout"], "samples": n, **counts,
        "misclassified": sum(r["prediction"] is not None and r["prediction"] != r["label"] for r in rows),
        "errors": sum(r["solver_status"] == "error" for r in rows),
        "clean_accuracy": share(correct),
        "certified_robust_accuracy": share(counts["robust"]),  # adversarial accuracy, lower bound
        "adversarial_accuracy_upper": share(n - counts["adversarial"]),
        "time_total": round(float(np.sum(times)), 3) if times else 0.0,
        "time_median": round(float(np.median(times)), 4) if times else None,
        "time_max": round(float(np.max(times)), 4) if times else None,
        **run_info,
    }
    if settings.get("distortion"):
        exact = [r["distortion_upper"] for r in rows if r["distortion_status"] == "optimal"]
        summary["distortion"] = {
            "norm": settings["distortion"], "eps_max": settings["eps_max"],
            **{s: sum(r["distortion_status"] == s for r in rows) for s in ("optimal", "infeasible", "unknown")},
            "median_exact": float(np.median(exact)) if exact else None,
            "mean_exact": float(np.mean(exact)) if exact else None,
        }
    return summary


def write_report(folder: Path, summary: dict, rows: list[dict], dataset, input_shape) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    figures = _figures(rows, dataset, input_shape, folder)
    (folder / "report.html").write_text(_html(summary, rows, figures))
    return folder


def image_shape(input_shape) -> tuple[int, ...] | None:
    """(H, W) or (H, W, 3) to draw a sample as a picture, or None if it is not image-like."""
    shape = tuple(int(s) for s in input_shape if int(s) != 1) if len(input_shape) > 1 else tuple(input_shape)
    if len(shape) == 2:
        return shape
    if len(shape) == 3 and shape[0] == 3:
        return shape[1], shape[2], 3
    size = int(np.prod(input_shape))
    side = int(round(np.sqrt(size)))
    return (side, side) if side * side == size and side >= 8 else None


def _picture(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 3:  # stored channels-first
        return np.moveaxis(flat.reshape(3, shape[0], shape[1]), 0, -1)
    return flat.reshape(shape)


def _figures(rows, dataset, input_shape, folder: Path) -> dict[str, str]:
    """Name -> base64 PNG; each is also written to the folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}

    def save(name, fig):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        (folder / f"{name}.png").write_bytes(buffer.getvalue())
        out[name] = base64.b64encode(buffer.getvalue()).decode()

    shape = image_shape(input_shape)
    examples = [r for r in rows if r["counterexample"] is not None]
    examples.sort(key=lambda r: (r["decided_by"] == "clean", r["index"]))  # real attacks first
    if shape is not None and examples:
        save("adversarial_examples", _grid(plt, examples[:MAX_EXAMPLES], dataset, shape, "counterexample",
                                           "adversarial_label"))
    minimal = [r for r in rows if r.get("distortion_example") is not None and r["distortion_upper"]]
    if shape is not None and minimal:
        save("minimal_examples", _grid(plt, minimal[:MAX_EXAMPLES], dataset, shape, "distortion_example",
                                       "distortion_label"))
    if rows:
        save("margins", _margins(plt, rows))
        save("times", _times(plt, rows))
    return out


def _grid(plt, rows, dataset, shape, key, label_key):
    """Per example: the original, the perturbed input and their difference, with both labels."""
    per_line = 2
    lines = (len(rows) + per_line - 1) // per_line
    fig, axes = plt.subplots(lines, 3 * per_line, figsize=(9, 1.9 * lines), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if len(shape) == 2 else {}
    for n, r in enumerate(rows):
        line, slot = divmod(n, per_line)
        original = np.asarray(dataset.images[r["index"]], dtype=np.float64).ravel()
        perturbed = r[key].astype(np.float64)
        diff = perturbed - original
        cells = axes[line][3 * slot:3 * slot + 3]
        cells[0].imshow(np.clip(_picture(original, shape), 0, 1), **grey)
        cells[0].set_title(f"#{r['index']} label {r['label']}", fontsize=7)
        cells[1].imshow(np.clip(_picture(perturbed, shape), 0, 1), **grey)
        cells[1].set_title(f"classified {r[label_key]}", fontsize=7)
        scale = max(float(np.abs(diff).max()), 1e-12)
        picture = _picture(diff, shape)
        cells[2].imshow(picture.mean(axis=-1) if picture.ndim == 3 else picture, cmap="RdBu", vmin=-scale, vmax=scale)
        cells[2].set_title(f"difference, max {scale:.3g}", fontsize=7)
    fig.tight_layout()
    return fig


def _margins(plt, rows):
    """Distribution of the minimum distortion (if computed) or of the margin bounds."""
    fig, ax = plt.subplots(figsize=(6, 3))
    if any(r.get("distortion_status") == "optimal" for r in rows):
        values = [r["distortion_upper"] for r in rows if r["distortion_status"] == "optimal"]
        ax.hist(values, bins=30, color="#1c7ed6")
        ax.set_xlabel(f"minimum {rows[0]['distortion_norm']} distortion (exact samples)")
    else:
        for verdict, key in (("robust", "margin_lower"), ("adversarial", "margin_upper"), ("unknown", "margin_lower")):
            values = [r[key] for r in rows if r["verdict"] == verdict and r[key] is not None]
            if values:
                ax.hist(values, bins=30, alpha=0.7, color=COLOURS[verdict], label=f"{verdict} ({key.split('_')[1]})")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("margin bound: logit[label] - max other logit over the ball")
        ax.legend(fontsize=7)
    ax.set_ylabel("samples")
    fig.tight_layout()
    return fig


def _times(plt, rows):
    fig, ax = plt.subplots(figsize=(6, 3))
    for verdict in VERDICTS:
        mine = [r for r in rows if r["verdict"] == verdict and r["time"]]
        if mine:
            ax.scatter([r["index"] for r in mine], [r["time"] for r in mine], s=6, color=COLOURS[verdict], label=verdict)
    ax.set_yscale("log")
    ax.set_xlabel("sample index")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


_CSS = """body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#212529}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #dee2e6;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
.robust{color:#2b8a3e}.adversarial{color:#c92a2a}.unknown{color:#868e96}"""


def _html(summary: dict, rows: list[dict], figures: dict[str, str]) -> str:
    e = html.escape

    def line(key, text, value, css=""):
        shown = "—" if value is None else (f"{value:.2%}" if isinstance(value, float) and "accuracy" in key else value)
        return f'<tr><th class="{css}">{e(text)}</th><td class="n" id="{key}">{e(str(shown))}</td></tr>'

    s = summary
    table = "".join([
        line("samples", "samples", s["samples"]),
        line("robust", "robust (certified)", s["robust"], "robust"),
        line("adversarial", "adversarial (example checked by onnxruntime)", s["adversarial"], "adversarial"),
        line("unknown", "unknown (time limit)", s["unknown"], "unknown"),
        line("misclassified", "misclassified clean samples", s["misclassified"]),
        line("clean_accuracy", "clean accuracy", s["clean_accuracy"]),
        line("certified_robust_accuracy", "adversarial accuracy, lower bound (certified)", s["certified_robust_accuracy"]),
        line("adversarial_accuracy_upper", "adversarial accuracy, upper bound", s["adversarial_accuracy_upper"]),
        line("time_total", "verification time, total (s)", s["time_total"]),
        line("time_median", "verification time, median (s)", s["time_median"]),
        line("wall_time", "wall time of this run (s)", s["wall_time"]),
    ])
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Certification report: {e(s['model'])}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Certification report</h1><p>Model <b>{e(s['model'])}</b>, data {e(s['data'])}, "
             f"L∞ radius eps = <b>{s['eps']}</b>, {s['timeout']} s per sample, {s['workers']} worker(s) "
             f"({e(s['executor'])}){' — <b>interrupted</b>, partial results' if s['interrupted'] else ''}.</p>",
             f"<table id='summary'>{table}</table>"]
    if "distortion" in s:
        d = s["distortion"]
        parts.append(f"<h2>Minimum {e(d['norm'])} distortion</h2><p id='distortion'>exact for {d['optimal']}, none "
                     f"within the search set for {d['infeasible']}, open for {d['unknown']}; median of the exact "
                     f"values {d['median_exact']}</p>")
    captions = {"adversarial_examples": "Adversarial examples: original, perturbed input, difference",
                "minimal_examples": "Minimal adversarial examples: original, perturbed input, difference",
                "margins": "Distribution", "times": "Time per sample"}
    for name, caption in captions.items():
        if name in figures:
            parts.append(f"<h2>{e(caption)}</h2><img alt='{e(caption)}' src='data:image/png;base64,{figures[name]}'>")
    parts.append("<p>Every sample, one row each: <a href='results.csv'>results.csv</a>; "
                 "the numbers above: <a href='summary.json'>summary.json</a>.</p></body></html>")
    return "\n".join(parts)
