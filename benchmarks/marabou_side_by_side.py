"""Side by side with Marabou (the PyPI build) on the same mnistfc instances, in one session.

    pip install maraboupy            # benchmark-only; not a dependency of the verifier
    python benchmarks/marabou_side_by_side.py ../shared/benchmarks/vnncomp2021/mnistfc --timeout 120 --workers 2

Each (tool, instance) runs in a fresh process with the same time limit (Marabou's own
timeoutInSeconds; ours --timeout), one core each, tasks of both tools interleaved so that both
see the same machine load. Times are wall times of the whole process (start-up, model load,
solve). The time ratio per instance is Marabou's time over ours, a timeout counting as the
limit (so ratios on timeouts are bounds, not measurements). Default instances: props 0-2 of each network at
eps 0.03 and 0.05 (18).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_MARABOU = """
import sys
from maraboupy import Marabou
net = Marabou.read_onnx(sys.argv[1])
options = Marabou.createOptions(timeoutInSeconds=int(sys.argv[3]), verbosity=0)
code, _, _ = net.solve(verbose=False, options=options, propertyFilename=sys.argv[2])
print("RESULT", code)
"""


def _run(task) -> dict:
    tool, bench, network, prop, timeout = task
    onnx, vnnlib = str(bench / network), str(bench / prop)
    if tool == "marabou":
        cmd = [sys.executable, "-c", _MARABOU, onnx, vnnlib, str(int(timeout))]
    else:
        cmd = [sys.executable, "-m", "verifier.cli", onnx, "--vnnlib", vnnlib, "--timeout", str(timeout), "--json"]
    start = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
        out = p.stdout
    except subprocess.TimeoutExpired:
        out = ""
    elapsed = time.perf_counter() - start
    result = "error"
    if tool == "marabou":
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT")]
        result = lines[-1].split()[1].lower() if lines else "timeout"
    elif out.strip():
        result = json.loads(out.strip().splitlines()[-1])["result"]
    if result not in ("sat", "unsat"):
        result = "timeout" if elapsed >= timeout else result
    return {"tool": tool, "network": network, "property": prop, "result": result, "time": round(elapsed, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", type=Path)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--props", default="0,1,2")
    p.add_argument("--eps", default="0.03,0.05")
    p.add_argument("--csv")
    args = p.parse_args()
    instances = [(f"onnx/mnist-net_256x{d}.onnx", f"vnnlib/prop_{k}_{e}.vnnlib")
                 for d in (2, 4, 6) for e in args.eps.split(",") for k in args.props.split(",")]
    tasks = [(tool, args.bench, n, q, args.timeout) for n, q in instances for tool in ("ours", "marabou")]
    with ThreadPoolExecutor(args.workers) as pool:
        rows = list(pool.map(_run, tasks))
    by = {(r["network"], r["property"], r["tool"]): r for r in rows}
    print(f"{'instance':<36} {'ours':>16} {'marabou':>16} {'ratio':>7}")
    ratios = []
    for n, q in instances:
        a, b = by[(n, q, "ours")], by[(n, q, "marabou")]
        ta, tb = (r["time"] if r["result"] in ("sat", "unsat") else args.timeout for r in (a, b))
        ratio = tb / ta
        ratios.append(ratio)
        flag = "  DISAGREE" if {a["result"], b["result"]} == {"sat", "unsat"} else ""
        print(f"{Path(n).stem[10:] + ' ' + Path(q).stem:<36} {a['result']:>8} {a['time']:>7.1f} "
              f"{b['result']:>8} {b['time']:>7.1f} {ratio:>7.2f}{flag}")
    for tool in ("ours", "marabou"):
        mine = [r for r in rows if r["tool"] == tool]
        print(f"{tool}: {sum(r['result'] in ('sat', 'unsat') for r in mine)}/{len(mine)} answered, "
              f"total {sum(min(r['time'], args.timeout) for r in mine):.1f} s")
    ratios.sort()
    print(f"time ratio marabou/ours: median {ratios[len(ratios) // 2]:.2f}, min {ratios[0]:.2f}, max {ratios[-1]:.2f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
