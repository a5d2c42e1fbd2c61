"""`verify model.onnx --eps 0.01,0.05,0.1`: one sample (--input) or the embedded table at several
radii, each sample decided by `verifier.verify_radii` (answers at one radius imply others).

The table prints one row per sample with a column per radius (the verdict word), so a sample's
answers read left to right as the radius grows; the summary line gives the counts per radius.
`--json` gives one object per sample with its list of per-radius results ("radii"). A sample's
counterexample (for --save-example / --save-examples) is the one of its smallest adversarial
radius, which lies inside every larger radius's ball too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from verifier.options import VerifyOptions
from verifier.radii import RadiiResult, verify_radii

VERDICTS = ("robust", "adversarial", "unknown")


def eps_text(radii: list[float]) -> str:
    """"0.02,0.05,0.1": the radii as the user writes them."""
    return ",".join(f"{r:g}" for r in radii)


def counts_per_eps(samples: list[RadiiResult], radii: list[float]) -> list[dict]:
    """Per radius: {"eps", "robust", "adversarial", "unknown"} over the samples."""
    out = []
    for k, eps in enumerate(radii):
        verdicts = [s.results[k].status.value for s in samples]
        out.append({"eps": eps, **{v: verdicts.count(v) for v in VERDICTS}})
    return out


def single_radii(net, x: np.ndarray, radii: list[float], label: Optional[int], options: VerifyOptions,
                 as_json: bool, save_example: Optional[Path]) -> None:
    """One sample at every radius: a line per radius (or one JSON object), then the example."""
    from verifier.cli import save_example_file

    rr = verify_radii(net, x, radii, label=label, options=options)
    found = rr.example()
    if as_json:
        typer.echo(json.dumps(rr.to_dict()))
    else:
        width = max(len(f"eps={r:g}") for r in radii)
        for eps, r in rr:
            typer.echo(f"{f'eps={eps:g}':<{width}}  {r.status.value:<11} label={r.label} prediction={r.prediction} "
                       f"margin in [{r.margin_lower:.4g}, {r.margin_upper:.4g}]  {r.time:.2f}s  ({r.decided_by})")
        typer.echo(f"total {rr.time:.2f}s")
        if found is not None:
            eps, r = found
            typer.echo(f"counterexample (within eps={eps:g}) classified as {r.adversarial_label}"
                       + (f", saved to {save_example}" if save_example else ""))
    save_example_file(save_example, None if found is None else found[1].counterexample)


def table_radii(net, radii: list[float], label: Optional[int], options: VerifyOptions, as_json: bool, limit: int,
                start: int, save_examples: Optional[Path] = None) -> None:
    """The embedded slice at every radius: a row per sample, a column per radius, a summary; an
    interrupted run still prints the summary of the samples that finished."""
    from verifier.cli_slice import over_slice

    width = max(11, *(len(f"eps={r:g}") for r in radii))
    header = (f"{'index':>5} {'label':>5} {'pred':>4}  " + " ".join(f"{f'eps={r:g}':<{width}}" for r in radii)
              + f" {'time_s':>7}")
    rows, saved = over_slice(
        net, start, limit, label, as_json, header,
        check=lambda x, y: verify_radii(net, x, radii, label=y, options=options),
        line=lambda rr: (f"{rr.label:>5} {rr.prediction:>4}  " + " ".join(f"{r.status.value:<{width}}" for r in rr.results)
                         + f" {rr.time:>7.3f}"),
        example=lambda rr: rr.example(), save_examples=save_examples)
    times = [rr.time for _, rr in rows]
    per_eps = counts_per_eps([rr for _, rr in rows], radii)
    summary = {"samples": len(rows), "eps": radii, "per_eps": per_eps, "total_time": round(sum(times), 3),
               "median_time": round(float(np.median(times)), 4) if times else None}
    if as_json:
        typer.echo(json.dumps({"summary": summary, "results": [{"index": i, **rr.to_dict()} for i, rr in rows]}))
        return
    counts = "; ".join(f"eps={c['eps']:g}: {c['robust']} robust, {c['adversarial']} adversarial, "
                       f"{c['unknown']} unknown" for c in per_eps)
    typer.echo(f"summary: {summary['samples']} samples; {counts}; total {summary['total_time']:.2f}s, "
               f"median {summary['median_time']}s")
    if save_examples is not None:
        typer.echo(f"examples: {len(saved)} file(s) in {save_examples}")
