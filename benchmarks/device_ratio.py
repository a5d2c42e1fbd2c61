"""The same VNN-COMP instances on the CPU and on a GPU, one after the other in this process:
verdicts (which must agree) and times, and the ratio of the totals. For a machine with CUDA;
everything runs on the graph engine (`engine=graph`), the one that runs on a GPU.

    python benchmarks/device_ratio.py ../shared/benchmarks/vnncomp2021/cifar10_resnet --filter resnet_2b \\
        --count 12 --cap 30 [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import verifier
from verifier.vnncomp import result_word


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", type=Path)
    p.add_argument("--filter", default=None, help="only rows whose network or property contains this")
    p.add_argument("--count", type=int, default=10, help="the first COUNT matching instances")
    p.add_argument("--cap", type=float, default=30.0, help="seconds per instance (at most its own timeout)")
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    args = p.parse_args()
    with open(args.bench / "instances.csv", newline="") as f:
        rows = [r for r in csv.reader(f) if len(r) >= 3 and (args.filter is None or args.filter in r[0] + r[1])]
    rows = rows[:args.count]
    totals = {d: 0.0 for d in args.devices}
    disagree = 0
    print(f"{'instance':<60} " + " ".join(f"{d:>18}" for d in args.devices))
    for network, prop, timeout in rows:
        net = verifier.load(args.bench / network.strip())
        spec = verifier.Property.from_vnnlib(args.bench / prop.strip())
        cells, words = [], set()
        for device in args.devices:
            options = verifier.VerifyOptions(device=device, engine="graph")
            start = time.perf_counter()
            r = verifier.check(net, spec, timeout=min(float(timeout), args.cap), options=options)
            took = time.perf_counter() - start
            totals[device] += took
            word = result_word(r)
            words.add(word if word in ("sat", "unsat") else "open")
            cells.append(f"{word:>8} {took:8.2f}s")
        disagree += {"sat", "unsat"} <= words
        print(f"{Path(prop).name:<60} " + " ".join(f"{c:>18}" for c in cells), flush=True)
    print("total: " + ", ".join(f"{d} {t:.1f} s" for d, t in totals.items()))
    if len(args.devices) == 2 and totals[args.devices[1]] > 0:
        print(f"ratio {args.devices[0]}/{args.devices[1]}: {totals[args.devices[0]] / totals[args.devices[1]]:.2f}")
    print(f"contradicting verdicts (sat on one, unsat on the other): {disagree}")


if __name__ == "__main__":
    main()
