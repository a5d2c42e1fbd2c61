"""Verify the first N MNIST test images of a network at one eps or several; print a table and a summary.

    python benchmarks/eps_ball.py ../shared/benchmarks/mipverify/wk17a_linf0.1.onnx --eps 0.1 --count 100 --timeout 60
    python benchmarks/eps_ball.py ../shared/benchmarks/mipverify/rsl18a_linf0.1.onnx --eps 0.1 --count 20 --timeout 120
    python benchmarks/eps_ball.py ../shared/benchmarks/mipverify/wk17a_linf0.1.onnx --eps 0.02,0.05,0.1,0.15 --count 1000

With several radii (a comma list) each sample runs `verifier.verify_radii` (one --timeout for all
its radii, answers implying others): the table shows a letter per radius (r, a, u; capital when
implied by another radius), and the summary the counts, how each radius was decided, its seconds
(summed over samples) and the verify calls made.

Writes a CSV (one row per sample) with --csv. --workers N runs N samples at a time, one core
each (HiGHS and torch threads=1); the wall time includes starting the workers and loading the
model in each. --indices 7,9,11 picks samples instead of a range; --option name=value (repeatable)
sets a VerifyOptions field, e.g. --option bab=off --option disjunctions=split.
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import verifier
import verifier.radii as radii_module
from verifier.options import VerifyOptions, parse_setting
from verifier.radii import eps_list

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "mnist_test.npz"


_NET = None


def _load(model: str) -> None:
    global _NET
    _NET = verifier.load(model)


def _verify(task: tuple[int, np.ndarray, int, float, float]) -> dict:
    """One sample in a worker process (the model is loaded once per worker)."""
    i, image, label, eps, timeout, settings = task
    options = VerifyOptions(timeout=timeout, **settings)
    r = verifier.verify(_NET, image.reshape(_NET.input_shape), eps, label=label, options=options)
    return {"index": i, "label": r.label, "prediction": r.prediction, "status": r.status.value,
            "decided_by": r.decided_by, "margin_lower": r.margin_lower, "margin_upper": r.margin_upper,
            "time": r.time, "unstable": r.stats.get("unstable_alpha", r.stats.get("unstable_symbolic")),
            "bab_domains": r.stats.get("bab_domains", 0), "mip_nodes": r.stats.get("mip_nodes", 0)}


def _verify_radii(task) -> dict:
    """One sample at several radii in a worker process."""
    i, image, label, radii, timeout, settings = task
    options = VerifyOptions(timeout=timeout, **settings)
    calls = []
    real = radii_module.verify
    radii_module.verify = lambda *a, **k: calls.append(a[2]) or real(*a, **k)
    try:
        rr = verifier.verify_radii(_NET, image.reshape(_NET.input_shape), radii, label=label, options=options)
    finally:
        radii_module.verify = real
    return {"index": i, "label": rr.label, "prediction": rr.prediction, "time": rr.time, "calls": len(calls),
            "radii": [{"eps": e, "status": r.status.value, "decided_by": r.decided_by, "time": r.time,
                       "margin_lower": r.margin_lower, "margin_upper": r.margin_upper} for e, r in rr]}


def _several(args, images, labels, indices, settings, radii) -> None:
    tasks = [(i, images[i], int(labels[i]), radii, args.timeout, settings) for i in indices]
    rows = []
    wall = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(args.workers, 1), initializer=_load, initargs=(args.model,)) as pool:
        for row in pool.map(_verify_radii, tasks):
            rows.append(row)
            letters = " ".join((r["status"][0].upper() if r["decided_by"].startswith("implied") else r["status"][0])
                               for r in row["radii"])
            print(f"{row['index']:>5} {row['label']} {row['prediction']}  {letters}  {row['calls']} calls "
                  f"{row['time']:8.3f}s", flush=True)
    wall = time.perf_counter() - wall
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "eps", "label", "prediction", "status", "decided_by", "margin_lower", "margin_upper",
                        "time"])
            for row in rows:
                for r in row["radii"]:
                    w.writerow([row["index"], r["eps"], row["label"], row["prediction"], r["status"], r["decided_by"],
                                r["margin_lower"], r["margin_upper"], r["time"]])
    times = np.array([r["time"] for r in rows])
    print(f"model={Path(args.model).name} eps={','.join(f'{e:g}' for e in radii)} samples={len(rows)} "
          f"timeout={args.timeout}s (all radii) machine={platform.machine()} {platform.python_version()}")
    for k, eps in enumerate(radii):
        mine = [row["radii"][k] for row in rows]
        counts = {s: sum(r["status"] == s for r in mine) for s in ("robust", "adversarial", "unknown")}
        by = {}
        for r in mine:
            key = "implied" if r["decided_by"].startswith("implied") else r["decided_by"]
            by[key] = by.get(key, 0) + 1
        print(f"eps={eps:g}: counts={counts} decided_by={by} seconds={sum(r['time'] for r in mine):.1f}")
    print(f"verify calls={sum(r['calls'] for r in rows)} (of {len(rows) * len(radii)} radii)")
    print(f"time per sample: median={np.median(times):.3f}s mean={times.mean():.3f}s max={times.max():.3f}s "
          f"total={times.sum():.1f}s wall={wall:.1f}s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--eps", default="0.1", help="one radius, or several as a comma list (verify_radii)")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--workers", type=int, default=1, help="processes, one core each")
    p.add_argument("--data", default=str(MNIST))
    p.add_argument("--csv")
    p.add_argument("--indices", help="comma-separated sample indices (instead of --start/--count)")
    p.add_argument("--option", action="append", default=[], help="VerifyOptions field as name=value")
    args = p.parse_args()
    data = np.load(args.data)
    images, labels = data["images"].astype(np.float64) / 255.0, data["labels"]
    settings = dict(parse_setting(o) for o in args.option)
    indices = [int(i) for i in args.indices.split(",")] if args.indices else range(args.start, args.start + args.count)
    radii = eps_list(args.eps, "--eps")
    if len(radii) > 1:
        return _several(args, images, labels, indices, settings, radii)
    args.eps = radii[0]
    tasks = [(i, images[i], int(labels[i]), args.eps, args.timeout, settings) for i in indices]
    rows = []
    wall = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(args.workers, 1), initializer=_load, initargs=(args.model,)) as pool:
        for row in pool.map(_verify, tasks):
            rows.append(row)
            print(f"{row['index']:>5} {row['label']} {row['prediction']} {row['status']:<11} {row['decided_by']:<8} "
                  f"[{row['margin_lower']:9.4f}, {row['margin_upper']:9.4f}] {row['time']:8.3f}s", flush=True)
    wall = time.perf_counter() - wall
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    times = np.array([r["time"] for r in rows])
    counts = {s: sum(r["status"] == s for r in rows) for s in ("robust", "adversarial", "unknown")}
    by = {}
    for r in rows:
        by[r["decided_by"]] = by.get(r["decided_by"], 0) + 1
    print(f"model={Path(args.model).name} eps={args.eps} samples={len(rows)} timeout={args.timeout}s "
          f"machine={platform.machine()} {platform.python_version()}")
    print(f"counts={counts} decided_by={by}")
    print(f"time per sample: median={np.median(times):.3f}s mean={times.mean():.3f}s max={times.max():.3f}s "
          f"total={times.sum():.1f}s wall={wall:.1f}s")


if __name__ == "__main__":
    main()
