"""Try hard to falsify every `unsat` of a vnncomp.py results CSV (a sanity check, not a proof).

    python benchmarks/check_unsat.py ../shared/benchmarks/vnncomp2021/mnistfc benchmarks/out/mnistfc.csv
    python benchmarks/check_unsat.py <bench> <results.csv> --open --restarts 20 --steps 100

For each unsat instance: a long PGD (many restarts, corner starts) on every disjunct plus uniform
sampling, all re-checked by onnxruntime. Any violation found means a wrong `unsat` (a soundness
bug) and is printed; the exit code is 1 then. With `--open` the same attack runs on the instances
left open (timeout, unknown) instead: a violation there is a `sat` the run missed, which counts
as an answer, so the least slack says how far each is from one.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

import verifier
from verifier.check import reference_logits
from verifier.search.attack import pgd_attack


def falsify(net, prop, restarts: int, steps: int, samples: int, seed: int) -> float:
    """The least slack found over all regions (onnxruntime re-checked for the best point)."""
    rng = np.random.default_rng(seed)
    least = np.inf
    for region in prop.regions:
        attack = pgd_attack(net, region.box, (region.box.lo + region.box.hi) / 2, region.disjuncts,
                            restarts=restarts, steps=steps, seed=seed)
        xs = rng.uniform(region.box.lo, region.box.hi, (samples, region.box.lo.size))
        ys = net.forward(xs)
        slack = np.min([c.slack(ys) for c in region.disjuncts], axis=0)
        best = attack.x if attack.value <= slack.min() else xs[int(np.argmin(slack))]
        y = reference_logits(net, region.box.clip_float32(best))
        least = min(least, min(float(c.slack(y)[0]) for c in region.disjuncts))
    return least


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", type=Path)
    p.add_argument("results", type=Path)
    p.add_argument("--restarts", type=int, default=50)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--open", action="store_true", help="attack the open instances (timeout, unknown) instead")
    args = p.parse_args()
    wrong = checked = found = 0
    words = ("timeout", "unknown") if args.open else ("unsat",)
    with open(args.results, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["result"] in words]
    for r in rows:
        net = verifier.load(args.bench / r["network"])
        prop = verifier.Property.from_vnnlib(args.bench / r["property"])
        least = falsify(net, prop, args.restarts, args.steps, args.samples, seed=1)
        checked += 1
        if args.open:
            flag = "SAT (missed by the run)" if least <= 0 else "still open"
            found += least <= 0
        else:
            flag = "VIOLATED" if least <= 0 else "ok"
            wrong += least <= 0
        print(f"{r['network']:<28} {r['property']:<28} least slack found {least:9.4f}  {flag}", flush=True)
    print(f"{checked} open instances checked, {found} sat" if args.open else f"{checked} unsat answers checked, {wrong} falsified")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
