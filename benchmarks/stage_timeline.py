"""Where one hard instance spends its time: a line per stage of the branch-and-bound pipeline
(probe search, each refinement pass with its seconds per layer, the final search) with the
wall clock and the worst open disjunct bound after it. The bound after each refinement pass
is the one number that tells whether a change to the refinement pays; the final search turns
it into an answer (RESULTS, "Sessions 12–13": from -0.65 it proved 256x6 prop_10 eps 0.05 in
7 s, from -1.1 it did not in 70 s).

    python benchmarks/stage_timeline.py ../shared/benchmarks/vnncomp2021/mnistfc 256x6 prop_10_0.05 300 \\
        --set processes=2
    python benchmarks/stage_timeline.py ../shared/benchmarks/vnncomp2021/cifar10_resnet onnx/resnet_4b.onnx \\
        vnnlib/resnet4b/prop_6_eps_0.004.vnnlib 120

It listens to the verifier's stage log (verifier.search.run_state.stage_log): the verdict and
the bounds are the verifier's own, printed at the end with its stats.
"""
import argparse
import json
import logging
import time
from pathlib import Path

import verifier
from verifier.errors import VerifierError
from verifier.options import parse_setting
from verifier.search.run_state import stage_log
from verifier.vnncomp import result_word

START = time.perf_counter()


def _stamp() -> str:
    return f"[{time.perf_counter() - START:7.1f} s]"


class _Timeline(logging.Handler):
    """Prints the verifier's stage events (search.run_state.stage_log) as they come."""

    def emit(self, record: logging.LogRecord) -> None:
        extra = ""
        if record.stage == "refinement pass":
            extra = (f", {record.per_layer:.1f} s per layer planned, {record.domains} domains, "
                     f"{record.skipped} layers skipped")
        print(f"{_stamp()} {record.stage} took {record.seconds:.1f} s{extra}: worst open disjunct bound "
              f"{record.worst_open:.4f} ({record.open} open)", flush=True)


def _inside(bench: Path, given: str, short: str) -> Path:
    """`given` as a path inside the benchmark folder if it is one, else its mnistfc short form."""
    return bench / given if (bench / given).is_file() else bench / short


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", help="a VNN-COMP folder with onnx/ and vnnlib/, e.g. mnistfc")
    parser.add_argument("network", help="e.g. 256x6 (the file onnx/mnist-net_<network>.onnx) or a path inside "
                                            "the folder, e.g. onnx/resnet_4b.onnx")
    parser.add_argument("prop", help="e.g. prop_10_0.05 (the file vnnlib/<prop>.vnnlib) or a path inside the "
                                         "folder, e.g. vnnlib/resnet4b/prop_6_eps_0.004.vnnlib")
    parser.add_argument("timeout", type=float)
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="a VerifyOptions field, e.g. --set processes=2 (repeatable)")
    args = parser.parse_args()
    bench = Path(args.bench)
    try:  # a bad option or file: one line and exit code 2, as the CLI does
        settings = dict(parse_setting(s) for s in args.set)
        net = verifier.load(_inside(bench, args.network, f"onnx/mnist-net_{args.network}.onnx"))
        spec = verifier.Property.from_vnnlib(_inside(bench, args.prop, f"vnnlib/{args.prop}.vnnlib"))
    except VerifierError as error:
        parser.exit(2, f"stage_timeline: {error}\n")
    stage_log.addHandler(_Timeline())
    stage_log.setLevel(logging.INFO)
    result = verifier.check(net, spec, timeout=args.timeout, options=verifier.VerifyOptions(**settings))
    print(f"{_stamp()} {args.network} {args.prop} {settings}: {result_word(result)} ({result.decided_by}), "
          f"margin bounds [{result.margin_lower:.4f}, {result.margin_upper:.4f}]")
    print(json.dumps(getattr(result, "stats", {}), default=str))


if __name__ == "__main__":
    main()
