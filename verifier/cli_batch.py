"""`verify --report FOLDER`: batch certification from the command line (see verifier/batch)."""

from __future__ import annotations

import json

import typer

from verifier.batch import certify_dataset


def batch_command(net, eps, data, report, start, limit, timeout, workers, executor, address, distortion, eps_max,
                  as_json, options=None, save_examples=None, rerun_unknown=False) -> int:
    """Runs the batch and prints the summary; returns the exit code (130 when interrupted: the
    results so far are stored and reported, and the same command resumes). `save_examples`
    also writes the counterexamples (on a finished folder, that is all it does);
    `rerun_unknown` reruns the folder's unknown samples (see verifier/batch/rerun.py)."""
    result = certify_dataset(net, eps=eps, report=report, data=data, start=start, limit=limit, timeout=timeout,
                             workers=workers, executor=executor, address=address, distortion=distortion,
                             eps_max=eps_max, options=options, save_examples=save_examples,
                             rerun_unknown=rerun_unknown)
    s = result.summary
    if as_json:
        typer.echo(json.dumps(s if save_examples is None else {**s, "examples_saved": len(result.examples)}))
    elif isinstance(s["eps"], list):  # several radii: a line per radius
        typer.echo(f"{s['samples']} of {s['requested']} samples ({s['misclassified']} misclassified), clean "
                   f"{_share(s['clean_accuracy'])}; wall {s['wall_time']:.1f}s")
        for p in s["per_eps"]:
            typer.echo(f"  eps={p['eps']:g}: {p['robust']} robust, {p['adversarial']} adversarial, {p['unknown']} "
                       f"unknown; adversarial accuracy in [{_share(p['certified_robust_accuracy'])}, "
                       f"{_share(p['adversarial_accuracy_upper'])}]")
        typer.echo(f"report: {result.report / 'report.html'}")
        if save_examples is not None:
            typer.echo(f"examples: {len(result.examples)} file(s) in {save_examples}")
    else:
        typer.echo(f"{s['samples']} of {s['requested']} samples, eps={s['eps']}: {s['robust']} robust, "
                   f"{s['adversarial']} adversarial ({s['misclassified']} misclassified), {s['unknown']} unknown; "
                   f"adversarial accuracy in [{_share(s['certified_robust_accuracy'])}, "
                   f"{_share(s['adversarial_accuracy_upper'])}], clean {_share(s['clean_accuracy'])}; "
                   f"wall {s['wall_time']:.1f}s")
        typer.echo(f"report: {result.report / 'report.html'}")
        if save_examples is not None:
            typer.echo(f"examples: {len(result.examples)} file(s) in {save_examples}")
    if result.interrupted:
        typer.echo(f"interrupted ({s['stopped_by']}): the finished samples are stored; run the same command to resume",
                   err=True)
        return 130
    return 0


def _share(value) -> str:
    return "—" if value is None else f"{value:.2%}"
