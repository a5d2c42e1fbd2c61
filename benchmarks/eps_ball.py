"""Verify the first N MNIST test images of a network at one eps; print a table and a summary.

    python benchmarks/eps_ball.py ../shared/benchmarks/mipverify/wk17a_linf0.1.onnx --eps 0.1 --count 100 --timeout 60
    python benchmarks/eps_ball.py ../shared/benchmarks/mipverify/rsl18a_linf0.1.onnx --eps 0.1 --count 20 --timeout 120

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
from verifier.options import VerifyOptions, parse_setting

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--eps", type=float, default=0.1)
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
