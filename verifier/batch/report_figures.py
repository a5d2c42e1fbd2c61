"""The figures of a batch report (matplotlib, PNG): galleries, distributions, time, eps curve.

Each function returns a matplotlib Figure; report.py saves it next to the page and embeds it
as base64, so the page stays one file. Galleries keep real attacks and misclassified samples
apart (a misclassified sample's "example" is the clean input: its difference is rounding
noise, not an attack), every difference image has a colour bar, and a distortion is titled
"proven minimal" only when its interval is closed.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from verifier.batch.report_format import misclassified, norm_name, number, sample_time

VERDICTS = ("robust", "adversarial", "unknown")
COLOURS = {"robust": "#2b8a3e", "adversarial": "#c92a2a", "unknown": "#868e96"}


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def picture(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A flat sample as an image array (channels-first storage moved last for colour)."""
    if len(shape) == 3:
        return np.moveaxis(np.asarray(flat).reshape(3, shape[0], shape[1]), 0, -1)
    return np.asarray(flat).reshape(shape)


def example_grid(rows: Sequence[dict], images, shape, key: str, label_key: str, distortion: bool = False):
    """Per example: the original, the perturbed input and their difference (with a colour bar).

    `distortion`: title the perturbed input by its distance and whether it is proven minimal."""
    plt = pyplot()
    per_line = 2
    lines = (len(rows) + per_line - 1) // per_line
    fig, axes = plt.subplots(lines, 3 * per_line, figsize=(10, 2.0 * lines), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if len(shape) == 2 else {}
    for n, r in enumerate(rows):
        line, slot = divmod(n, per_line)
        original = np.asarray(images[r["index"]], dtype=np.float64).ravel()
        perturbed = np.asarray(r[key], dtype=np.float64).ravel()
        diff = perturbed - original
        cells = axes[line][3 * slot:3 * slot + 3]
        cells[0].imshow(np.clip(picture(original, shape), 0, 1), **grey)
        cells[0].set_title(f"#{r['index']} label {r['label']}", fontsize=7)
        cells[1].imshow(np.clip(picture(perturbed, shape), 0, 1), **grey)
        title = f"classified {r[label_key]}"
        if distortion:
            words = "proven minimal" if r.get("distortion_status") == "optimal" else (
                f"best found (lower bound {number(r.get('distortion_lower'), 3)})")
            title = f"{title}, d={number(r.get('distortion_upper'), 3)}\n{words}"
        cells[1].set_title(title, fontsize=7)
        scale = max(float(np.abs(diff).max()), 1e-12)
        image = picture(diff, shape)
        shown = cells[2].imshow(image.mean(axis=-1) if image.ndim == 3 else image, cmap="RdBu", vmin=-scale,
                                vmax=scale)
        cells[2].set_title("difference" + (" (mean of channels)" if image.ndim == 3 else ""), fontsize=7)
        bar = fig.colorbar(shown, ax=cells[2], fraction=0.046, pad=0.04)
        bar.ax.tick_params(labelsize=6)
    return fig


def misclassified_grid(rows: Sequence[dict], images, shape):
    """Samples the network already gets wrong: the clean input, tagged with label and prediction."""
    plt = pyplot()
    per_line = 6
    lines = (len(rows) + per_line - 1) // per_line
    fig, axes = plt.subplots(lines, per_line, figsize=(10, 2.0 * lines), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if len(shape) == 2 else {}
    for n, r in enumerate(rows):
        ax = axes[n // per_line][n % per_line]
        ax.imshow(np.clip(picture(np.asarray(images[r["index"]], dtype=np.float64).ravel(), shape), 0, 1), **grey)
        ax.set_title(f"MISCLASSIFIED #{r['index']}\nlabel {r['label']}, predicted {r['prediction']}", fontsize=7,
                     color=COLOURS["adversarial"])
    return fig


def distribution(rows: Sequence[dict]):
    """Proven minimal distortions of correctly classified samples if any, else the margin bounds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    exact = [r["distortion_upper"] for r in rows
             if r.get("distortion_status") == "optimal" and not misclassified(r) and r["distortion_upper"] is not None]
    if exact:
        ax.hist(exact, bins=30, color="#1c7ed6")
        ax.set_xlabel(f"proven minimal {norm_name(rows[0]['distortion_norm'])} distortion (correctly classified samples)")
    else:
        for verdict, key in (("robust", "margin_lower"), ("adversarial", "margin_upper"), ("unknown", "margin_lower")):
            values = [r[key] for r in rows if r["verdict"] == verdict and r.get(key) is not None]
            if values:
                ax.hist(values, bins=30, alpha=0.7, color=COLOURS[verdict], label=f"{verdict} ({key.split('_')[1]})")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("margin bound: logit[label] - max other logit over the ball")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax.set_ylabel("samples")
    fig.tight_layout()
    return fig


def times(rows: Sequence[dict]):
    """Seconds per sample (verification plus distortion search), coloured by verdict."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    for verdict in VERDICTS:
        mine = [r for r in rows if r["verdict"] == verdict and sample_time(r) > 0]
        if mine:
            ax.scatter([r["index"] for r in mine], [sample_time(r) for r in mine], s=6, color=COLOURS[verdict],
                       label=verdict)
    ax.set_yscale("log")
    ax.set_xlabel("sample index")
    with_distortion = any(r.get("distortion_time") is not None for r in rows)
    ax.set_ylabel("seconds" + (" (verification + distortion)" if with_distortion else ""), fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def eps_points(points: Iterable) -> list[tuple[float, float, float]]:
    """(eps, certified_lower, attack_upper) points, sorted by eps, from tuples/lists or dicts
    with those keys; points with a missing value are left out."""
    out = []
    for p in points:
        values = (p.get("eps"), p.get("certified_lower"), p.get("attack_upper")) if isinstance(p, dict) else tuple(p)
        if len(values) != 3 or any(v is None for v in values):
            continue
        out.append(tuple(float(v) for v in values))
    return sorted(out)


def eps_curve(points: Iterable):
    """Adversarial accuracy against eps: the certified lower bound (robust share) and the attack
    upper bound (all but the proven adversarial share); the truth lies in the band between."""
    plt = pyplot()
    pts = eps_points(points)
    fig, ax = plt.subplots(figsize=(6, 3))
    if pts:
        eps, lower, upper = (np.array(c) for c in zip(*pts))
        style = {"marker": "o", "ms": 4} if len(pts) > 1 else {"marker": "o", "ms": 6, "ls": "none"}
        ax.fill_between(eps, lower, upper, color="#ced4da", alpha=0.6, label="undecided (unknown)")
        ax.plot(eps, upper, color=COLOURS["adversarial"], label="upper bound (attacks)", **style)
        ax.plot(eps, lower, color=COLOURS["robust"], label="certified lower bound", **style)
        if len(pts) == 1:
            ax.vlines(eps, lower, upper, color="#868e96", lw=3, alpha=0.6)
            ax.set_xlim((0, 2 * eps[0]) if eps[0] > 0 else (-0.01, 0.01))
        ax.legend(fontsize=7, loc="lower left")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("eps (L∞ radius)")
    ax.set_ylabel("adversarial accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
