"""One input-split search per ACAS Xu instance, in this process, without the harness: how long
it takes, how many boxes it bounds, and the bound it ends at. For measuring the search's settings
one at a time (benchmarks/RESULTS.md, "ACAS Xu by splitting the input box").

    python benchmarks/input_split_probe.py 4_2:2 3_3:2 --seconds 100 [--trial 3 --alpha 10 --batch 128]

An instance is network:property (ACASXU_run2a_<network>_batch_2000.onnx, prop_<property>.vnnlib).
A found point is reported as "counterexample" after a plain forward pass agrees.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

import verifier
from verifier.bab.graph_problem import spec_rows
from verifier.bab.input_split import InputSplitSettings, Specs, input_branch_and_bound
from verifier.bounds.graph import compiled
from verifier.bounds.walker import EXACT

ACAS = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "vnncomp2021" / "acasxu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("instances", nargs="+", help="network:property, e.g. 4_2:2")
    parser.add_argument("--folder", type=Path, default=ACAS)
    parser.add_argument("--seconds", type=float, default=100.0)
    parser.add_argument("--trial", type=int, default=InputSplitSettings.trial)
    parser.add_argument("--alpha", type=int, default=InputSplitSettings.alpha_steps)
    parser.add_argument("--batch", type=int, default=InputSplitSettings.batch)
    parser.add_argument("--milp", type=int, default=InputSplitSettings.milp_relus,
                        help="decide a box with at most this many unstable ReLUs by a MILP (0: never)")
    parser.add_argument("--ratio", type=float, default=InputSplitSettings.milp_ratio)
    parser.add_argument("--milp-seconds", type=float, default=InputSplitSettings.milp_seconds)
    args = parser.parse_args()
    reference = {(r["network"], r["property"]): r for r in csv.DictReader(open(args.folder / "reference_2021.csv"))}
    settings = InputSplitSettings(batch=args.batch, trial=args.trial, alpha_steps=args.alpha,
                                  milp_relus=args.milp, milp_ratio=args.ratio,
                                  milp_seconds=args.milp_seconds)
    for instance in args.instances:
        network, prop_number = instance.split(":")
        onnx, vnnlib = f"onnx/ACASXU_run2a_{network}_batch_2000.onnx", f"vnnlib/prop_{prop_number}.vnnlib"
        net = verifier.load(args.folder / onnx)
        prop = verifier.Property.from_vnnlib(args.folder / vnnlib)
        graph = compiled(net, "cpu", EXACT)
        began, outcomes = time.perf_counter(), []
        for region in prop.regions:
            specs = Specs.of([spec_rows(c.C, c.d) for c in region.disjuncts])

            def violates(x: torch.Tensor, region=region) -> bool:
                y = net.forward(x.numpy())
                return min(float(c.slack(y)[0]) for c in region.disjuncts) <= 0

            outcomes.append(input_branch_and_bound(
                graph, specs, torch.as_tensor(region.box.lo), torch.as_tensor(region.box.hi),
                torch.full((specs.count,), -np.inf), 1e-5, time.perf_counter() + args.seconds, violates, settings))
        ref = reference.get((onnx, vnnlib), {})
        print(instance, [o.status for o in outcomes], f"{time.perf_counter() - began:.2f} s",
              "boxes", sum(o.stats["input_boxes"] for o in outcomes),
              "bound", [float(np.min(o.lower)) for o in outcomes],
              "milps", sum(o.stats.get("input_milps", 0) for o in outcomes),
              "milp s", round(sum(o.stats.get("time_input_milp", 0) for o in outcomes), 1),
              "milp closed", sum(o.stats.get("input_milp_closed", 0) for o in outcomes),
              "expected", ref.get("expected"), "α,β-CROWN 2021", ref.get("abcrown_2021_time_s"), flush=True)


if __name__ == "__main__":
    main()
