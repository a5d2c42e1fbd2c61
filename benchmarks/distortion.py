"""Minimum adversarial distortion of the first N MNIST test images; a table, a CSV, a figure.

    python benchmarks/distortion.py ../shared/benchmarks/mipverify/wk17a_linf0.1.onnx --norms linf,l1 --count 20 --timeout 300
    python benchmarks/distortion.py <model> --norms linf --strategies direct,bisection,hybrid --count 10 --timeout 60

--workers N runs N (image, norm, strategy) tasks at a time, one core each. --figure out.png
draws each image next to its minimal adversarial examples.
"""

from __future__ import annotations

import argparse
import csv
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import verifier

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "mnist_test.npz"
_NET = None


def _load(model: str) -> None:
    global _NET
    _NET = verifier.load(model)


def _run(task) -> dict:
    i, image, label, norm, strategy, timeout, eps_max = task
    r = verifier.min_distortion(_NET, image.reshape(_NET.input_shape), norm=norm, label=label, timeout=timeout,
                                strategy=strategy, eps_max=eps_max)
    return {"index": i, "label": label, "norm": norm, "strategy": r.strategy or strategy, "status": r.status,
            "lower": r.lower, "upper": r.upper, "adversarial_label": r.adversarial_label, "time": round(r.time, 3),
            "binaries": r.stats.get("binaries"), "mip_nodes": r.stats.get("mip_nodes"),
            "mip_solves": r.stats.get("mip_solves"), "l2_cuts": r.stats.get("l2_cuts"),
            "verifications": r.stats.get("verifications"), "attack_upper": r.stats.get("attack_upper"),
            "example": None if r.example is None else r.example.ravel()}


def _caption(row: dict | None) -> str:
    if row is None:
        return "not run"
    if row["status"] == "infeasible":
        return f"{row['norm']}: none in the ball"
    if row["example"] is None:
        return f"{row['norm']}: > {row['lower']:.3g}"
    exact = "=" if row["status"] == "optimal" else "<="
    return f"{row['norm']} {exact} {row['upper']:.4g} -> {row['adversarial_label']}"


def _figure(rows: list[dict], images: np.ndarray, path: str, per_line: int = 2) -> None:
    """Each image next to its minimal adversarial example per norm (the best one found when the
    search timed out, marked <=), several images per line of the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = sorted({r["norm"] for r in rows})
    indices = sorted({r["index"] for r in rows})
    group = 1 + len(norms)
    lines = (len(indices) + per_line - 1) // per_line
    fig, axes = plt.subplots(lines, per_line * group, figsize=(1.5 * per_line * group, 1.75 * lines), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for n, i in enumerate(indices):
        line, first = divmod(n, per_line)
        cells = axes[line][first * group:(first + 1) * group]
        cells[0].imshow(images[i].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
        cells[0].set_title(f"#{i + 1} (label {int(next(r['label'] for r in rows if r['index'] == i))})", fontsize=7)
        for cell, norm in zip(cells[1:], norms):
            mine = [r for r in rows if r["index"] == i and r["norm"] == norm]
            best = min(mine, key=lambda r: r["upper"]) if mine else None
            if best is not None and best["example"] is not None:
                cell.imshow(best["example"].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            cell.set_title(_caption(best), fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--norms", default="linf")
    p.add_argument("--strategies", default="auto")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--eps-max", type=float, default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--data", default=str(MNIST))
    p.add_argument("--csv")
    p.add_argument("--figure")
    args = p.parse_args()
    data = np.load(args.data)
    images, labels = data["images"].astype(np.float64) / 255.0, data["labels"]
    tasks = [(i, images[i], int(labels[i]), norm, strategy, args.timeout, args.eps_max)
             for i in range(args.start, args.start + args.count)
             for norm in args.norms.split(",") for strategy in args.strategies.split(",")]
    wall = time.perf_counter()
    print(f"{'index':>5} {'label':>5} {'norm':>4} {'strategy':>9} {'status':>10} {'lower':>10} {'upper':>10} {'time_s':>8}")
    rows = []
    with ProcessPoolExecutor(args.workers, initializer=_load, initargs=(args.model,)) as pool:
        for row in pool.map(_run, tasks):
            rows.append(row)
            print(f"{row['index']:>5} {row['label']:>5} {row['norm']:>4} {row['strategy']:>9} {row['status']:>10} "
                  f"{row['lower']:>10.6g} {row['upper']:>10.6g} {row['time']:>8.2f}", flush=True)
    wall = time.perf_counter() - wall
    for norm in args.norms.split(","):
        for strategy in {r["strategy"] for r in rows if r["norm"] == norm}:
            mine = [r for r in rows if r["norm"] == norm and r["strategy"] == strategy]
            done = sum(r["status"] in ("optimal", "infeasible") for r in mine)
            print(f"{norm} {strategy}: {done}/{len(mine)} closed, median {np.median([r['time'] for r in mine]):.2f} s, "
                  f"total {sum(r['time'] for r in mine):.1f} s")
    print(f"wall {wall:.1f} s with {args.workers} worker(s)")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            fields = [k for k in rows[0] if k != "example"]
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    if args.figure:
        _figure(rows, images, args.figure)


if __name__ == "__main__":
    main()
