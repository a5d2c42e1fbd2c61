"""A heavy PGD attack on the timeouts of a vnncomp.py run: are any of them an easy `sat`?

    python benchmarks/attack_probe.py ../shared/benchmarks/vnncomp2021/mnistfc <run.csv> [--restarts 200 --steps 300]

A timeout that a much stronger attack than the verifier's own turns into a counterexample
would be an answer the verifier leaves on the table; one where it finds nothing is evidence
that the instance is hard to prove, not hard to refute. Per disjunct: `restarts` starts (a
third at random box corners, the rest uniform) and `steps` signed-gradient steps with a
decaying step size, in float32 torch on the network's chain form. Prints the best margin
found next to the run's own best point (its `margin_upper`); a margin <= 0 is saved as .npy
for an independent check (e.g. with onnxruntime). Plain ReLU chains only.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

import verifier
from verifier.bab.layered import as_layered


def probe(network: Path, prop: Path, restarts: int, steps: int, seed: int = 0) -> tuple[float, np.ndarray]:
    """The least slack found over all disjuncts of the property's first region, and its point."""
    chain = as_layered(verifier.load(network))
    if chain is None:
        raise SystemExit(f"{network}: not a plain ReLU chain")
    chain = chain.to(torch.float32)
    region = verifier.Property.from_vnnlib(prop).regions[0]
    lo = torch.as_tensor(region.box.lo, dtype=torch.float32)
    hi = torch.as_tensor(region.box.hi, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    best, best_x = np.inf, lo.numpy()
    for conj in region.disjuncts:
        c = torch.as_tensor(conj.C, dtype=torch.float32)
        d = torch.as_tensor(conj.d, dtype=torch.float32)
        x = lo + (hi - lo) * torch.rand((restarts, lo.numel()), generator=gen)
        corners = restarts // 3
        x[:corners] = torch.where(torch.rand((corners, lo.numel()), generator=gen) < 0.5, lo, hi)
        x.requires_grad_(True)
        for step in range(steps):
            slack = (chain.forward(x) @ c.T - d).max(dim=1).values
            i = int(slack.argmin())
            if float(slack[i].detach()) < best:
                best, best_x = float(slack[i].detach()), x[i].detach().numpy().copy()
            if best <= 0:
                return best, best_x
            (grad,) = torch.autograd.grad(slack.sum(), x)
            with torch.no_grad():
                x -= (hi - lo) * (0.1 * (1 - step / steps) + 0.005) * grad.sign()
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
    return best, best_x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path)
    parser.add_argument("run_csv", type=Path, help="a results CSV of benchmarks/vnncomp.py")
    parser.add_argument("--restarts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with open(args.run_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["result"] == "timeout"]
    for row in rows:
        start = time.perf_counter()
        best, x = probe(args.bench / row["network"], args.bench / row["property"], args.restarts, args.steps)
        print(f"{row['network']:<28} {row['property']:<28} attack {best:8.4f}  run {float(row['margin_upper']):8.4f}"
              f"  {time.perf_counter() - start:5.1f}s", flush=True)
        if best <= 0:
            name = f"{Path(row['network']).stem}_{Path(row['property']).stem}.npy"
            np.save(name, x)
            print(f"  margin <= 0: point saved to {name}", flush=True)


if __name__ == "__main__":
    main()
