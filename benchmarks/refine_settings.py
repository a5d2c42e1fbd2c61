"""Which search settings refine a layer's bounds fastest: one refinement pass of one instance
is captured, then each ReLU layer's refinement search of that pass is rerun for a fixed time
with each setting, and the layer's summed relaxation gap is printed before and after.

    python benchmarks/refine_settings.py ../shared/benchmarks/vnncomp2021/mnistfc 256x6 prop_10_0.05 \\
        --pass 2 --seconds 10 --try "branching=trial steps=8 candidates=4" --try ""

A setting is space-separated BabSettings fields on top of the ones the captured run used
(`refine.layer_settings`); "" is the current setting itself. The gap of an unstable neuron is
u(-l)/(u-l), the height of its triangle relaxation: the looseness that every later layer's
bound inherits. This is the measurement behind `layer_settings` (RESULTS, session 14). One
process, one core: compare settings within one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

import verifier
import verifier.bab.refine as refine
from verifier.bab.search import BabSettings
from verifier.errors import VerifierError
from verifier.options import parse_setting


class _Captured(BaseException):
    """Ends the verifier run once the wanted pass is captured (BaseException: not caught as
    an error by the verifier)."""


def relaxation_gap(lower: torch.Tensor, upper: torch.Tensor) -> float:
    """Sum over unstable neurons of u(-l)/(u-l)."""
    unstable = (lower < 0) & (upper > 0)
    width = torch.where(unstable, upper - lower, torch.ones_like(upper))
    return float((upper * -lower / width)[unstable].sum())


def capture(net, spec, wanted_pass: int, timeout: float) -> list[dict]:
    """The inputs of every refine_layer call of refinement pass `wanted_pass` (0 first)."""
    original, calls, seen = refine.refine_layer, [], {}

    def recording(layered, k, x_lo, x_hi, lower, upper, deadline, settings, workers=None):
        number = seen.get(k, 0)
        seen[k] = number + 1
        if number > wanted_pass:
            raise _Captured
        if number == wanted_pass:
            calls.append(dict(net=layered, k=k, x_lo=x_lo, x_hi=x_hi, lower=list(lower), upper=list(upper),
                              settings=settings))
        return original(layered, k, x_lo, x_hi, lower, upper, deadline, settings, workers)

    refine.refine_layer = recording
    try:
        verifier.check(net, spec, timeout=timeout, options=verifier.VerifyOptions(processes=1))
    except _Captured:
        pass
    finally:
        refine.refine_layer = original
    return calls


def parse_overrides(text: str) -> dict:
    """"steps=4 branching=gap" -> {"steps": 4, "branching": "gap"}, typed and checked as
    BabSettings fields."""
    overrides = dict(parse_setting(item, BabSettings) for item in text.split())
    BabSettings(**overrides)  # a word outside a field's choices is refused here
    return overrides


def run_setting(call: dict, overrides: dict, seconds: float) -> tuple[float, int]:
    """(gap after, domains) of one layer's refinement search run for `seconds`, with the
    settings the captured run used changed by `overrides`."""
    k = call["k"]
    settings = dataclasses.replace(call["settings"], **overrides)
    args = (call["net"], k, call["x_lo"], call["x_hi"], call["lower"], call["upper"])
    refine.refine_layer(*args, time.perf_counter() + 1.0, settings)  # warm-up: torch's lazy imports
    lower, upper, stats = refine.refine_layer(*args, time.perf_counter() + seconds, settings)
    return relaxation_gap(lower[k][0], upper[k][0]), stats.get("bab_domains", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", help="a VNN-COMP folder with onnx/ and vnnlib/, e.g. mnistfc")
    parser.add_argument("network", help="e.g. 256x6 (the file onnx/mnist-net_<network>.onnx)")
    parser.add_argument("prop", help="e.g. prop_10_0.05 (the file vnnlib/<prop>.vnnlib)")
    parser.add_argument("--pass", dest="wanted_pass", type=int, default=1, help="refinement pass to capture (0 first)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per layer and setting")
    parser.add_argument("--timeout", type=float, default=600.0, help="of the capturing run")
    parser.add_argument("--try", dest="tries", action="append", default=None, metavar="SETTING")
    args = parser.parse_args()
    bench = Path(args.bench)
    tries = args.tries if args.tries is not None else ["branching=trial steps=8 candidates=4", ""]
    try:  # bad input: one line and exit code 2, as the CLI does
        overrides = [parse_overrides(t) for t in tries]
        net = verifier.load(bench / f"onnx/mnist-net_{args.network}.onnx")
        spec = verifier.Property.from_vnnlib(bench / f"vnnlib/{args.prop}.vnnlib")
    except (VerifierError, ValueError) as error:  # ValueError: a word outside a field's choices
        parser.exit(2, f"refine_settings: {error}\n")
    torch.set_num_threads(1)
    calls = capture(net, spec, args.wanted_pass, args.timeout)
    if not calls:
        parser.exit(2, f"refine_settings: the run ended before refinement pass {args.wanted_pass}\n")
    for call in calls:
        k = call["k"]
        before = relaxation_gap(call["lower"][k][0], call["upper"][k][0])
        unstable = int(((call["lower"][k][0] < 0) & (call["upper"][k][0] > 0)).sum())
        for text, o in zip(tries, overrides):
            after, domains = run_setting(call, o, args.seconds)
            print(f"layer {k} ({unstable} unstable) [{text or 'current'}]: gap {before:.2f} -> {after:.2f} "
                  f"in {args.seconds:g} s, {domains} domains", flush=True)


if __name__ == "__main__":
    main()
