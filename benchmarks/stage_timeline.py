"""Where one hard instance spends its time: a line per stage of the branch-and-bound pipeline
(probe search, each refinement pass with its seconds per layer, the final search) with the
wall clock and the worst open disjunct bound after it. The bound after each refinement pass
is the one number that tells whether a change to the refinement pays; the final search turns
it into an answer (RESULTS, "Sessions 12–13": from -0.65 it proved 256x6 prop_10 eps 0.05 in
7 s, from -1.1 it did not in 70 s).

    python benchmarks/stage_timeline.py ../shared/benchmarks/vnncomp2021/mnistfc 256x6 prop_10_0.05 300 \\
        --set processes=2

It wraps the stage functions of verifier.search (diagnostic only: the verdict and the bounds
are the verifier's own, printed at the end with its stats).
"""
import argparse
import inspect
import json
import time
from pathlib import Path

import verifier
import verifier.search.bab_stage as stages
import verifier.search.region as region
from verifier.errors import VerifierError
from verifier.options import parse_setting
from verifier.vnncomp import result_word

START = time.perf_counter()


def _stamp() -> str:
    return f"[{time.perf_counter() - START:7.1f} s]"


def _wrap_stages() -> None:
    """Log around refined_bounds (one refinement pass), _prove_disjuncts (the bound after it)
    and bab_search (probe and final searches), which region.py and bab_stage.py call by name."""
    refined_bounds, prove, bab_search = stages.refined_bounds, stages._prove_disjuncts, region.bab_search
    signature = inspect.signature(refined_bounds)

    def logged_pass(*args, **kwargs):
        start = time.perf_counter()
        out = refined_bounds(*args, **kwargs)
        stats = out[2]
        per_layer = signature.bind(*args, **kwargs).arguments["layer_budget"]
        print(f"{_stamp()} refinement pass: {per_layer:.1f} s per layer planned, took {time.perf_counter() - start:.1f} s, "
              f"{stats.get('refine_domains', 0)} domains, {stats.get('refine_skipped', 0)} layers skipped", flush=True)
        return out

    def logged_prove(run, *args, **kwargs):
        prove(run, *args, **kwargs)
        print(f"{_stamp()} worst open disjunct bound {run.worst_open():.4f} ({len(run.open())} open)", flush=True)

    def logged_search(run, *args, **kwargs):
        start = time.perf_counter()
        out = bab_search(run, *args, **kwargs)
        print(f"{_stamp()} search took {time.perf_counter() - start:.1f} s: worst open {run.worst_open():.4f} "
              f"({len(run.open())} open)", flush=True)
        return out

    stages.refined_bounds, stages._prove_disjuncts, region.bab_search = logged_pass, logged_prove, logged_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", help="a VNN-COMP folder with onnx/ and vnnlib/, e.g. mnistfc")
    parser.add_argument("network", help="e.g. 256x6 (the file onnx/mnist-net_<network>.onnx)")
    parser.add_argument("prop", help="e.g. prop_10_0.05 (the file vnnlib/<prop>.vnnlib)")
    parser.add_argument("timeout", type=float)
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="a VerifyOptions field, e.g. --set processes=2 (repeatable)")
    args = parser.parse_args()
    bench = Path(args.bench)
    try:  # a bad option or file: one line and exit code 2, as the CLI does
        settings = dict(parse_setting(s) for s in args.set)
        net = verifier.load(bench / f"onnx/mnist-net_{args.network}.onnx")
        spec = verifier.Property.from_vnnlib(bench / f"vnnlib/{args.prop}.vnnlib")
    except VerifierError as error:
        parser.exit(2, f"stage_timeline: {error}\n")
    _wrap_stages()
    result = verifier.check(net, spec, timeout=args.timeout, options=verifier.VerifyOptions(**settings))
    print(f"{_stamp()} {args.network} {args.prop} {settings}: {result_word(result)} ({result.decided_by}), "
          f"margin bounds [{result.margin_lower:.4f}, {result.margin_upper:.4f}]")
    print(json.dumps(getattr(result, "stats", {}), default=str))


if __name__ == "__main__":
    main()
