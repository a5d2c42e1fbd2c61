"""Where the time goes: model load, then per sample each stage's share, and the hottest
functions under cProfile.

    python benchmarks/profile_stages.py ../shared/benchmarks/mipverify/wk17a_linf0.1.onnx --eps 0.1 --count 20
    python benchmarks/profile_stages.py ../shared/benchmarks/vnncomp2021/mnistfc/onnx/mnist-net_256x4.onnx \
        --vnnlib ../shared/benchmarks/vnncomp2021/mnistfc/vnnlib/prop_0_0.03.vnnlib --timeout 60

Stage times come from each Result's stats (time_bounds: interval + symbolic; time_alpha_crown:
layer bounds incl. refine_time; time_bab; time_lp_tightening); "other" is the rest (attack,
LP, MIP, re-checks).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import numpy as np

import verifier

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "mnist_test.npz"
STAGES = ["time_bounds", "time_alpha_crown", "refine_time", "time_bab", "time_lp_tightening"]


def _runs(net, args):
    if args.vnnlib:
        prop = verifier.Property.from_vnnlib(args.vnnlib)
        yield args.vnnlib, lambda: verifier.check(net, prop, timeout=args.timeout)
        return
    data = np.load(args.data)
    images, labels = data["images"].astype(np.float64) / 255.0, data["labels"]
    for i in range(args.start, args.start + args.count):
        x = images[i].reshape(net.input_shape)
        yield f"image {i}", lambda x=x, y=int(labels[i]): verifier.verify(net, x, args.eps, label=y,
                                                                          timeout=args.timeout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--vnnlib")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--data", default=str(MNIST))
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    start = time.perf_counter()
    net = verifier.load(args.model)
    print(f"model load: {time.perf_counter() - start:.3f} s")
    profiler = cProfile.Profile()
    totals = dict.fromkeys(STAGES + ["total"], 0.0)
    print(f"{'run':<24} {'verdict':<11} {'total':>8} " + " ".join(f"{s.replace('time_', ''):>14}" for s in STAGES))
    for name, run in _runs(net, args):
        profiler.enable()
        r = run()
        profiler.disable()
        stage = [float(r.stats.get(s, 0.0)) for s in STAGES]
        for s, v in zip(STAGES, stage):
            totals[s] += v
        totals["total"] += r.time
        print(f"{Path(name).name:<24} {r.status.value:<11} {r.time:8.3f} " + " ".join(f"{v:14.3f}" for v in stage))
    print(f"{'all':<24} {'':<11} {totals['total']:8.3f} " + " ".join(f"{totals[s]:14.3f}" for s in STAGES))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
