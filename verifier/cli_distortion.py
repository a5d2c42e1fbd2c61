"""`verify --distortion`: minimum adversarial distortion for one sample or the embedded slice."""

from __future__ import annotations

import json
import sys

import typer

import verifier
from verifier.data import embedded_slice
from verifier.distortion.minimum import STRATEGIES
from verifier.distortion.norms import check_norm
from verifier.errors import InputError


def distortion_command(net, norm, x, label, targets, eps_max, strategy, options, as_json, save_example,
                       limit, start) -> None:
    check_norm(norm)
    if strategy not in STRATEGIES:
        raise InputError(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if x is not None:
        r = verifier.min_distortion(net, x, norm=norm, label=label, targets=targets, eps_max=eps_max,
                                    timeout=options.timeout, strategy=strategy, options=options)
        if as_json:
            typer.echo(json.dumps(r.to_dict()))
        else:
            typer.echo(f"{r.status}  {norm} distortion in [{r.lower:.6g}, {r.upper:.6g}]  label={r.label}"
                       f" -> {r.adversarial_label}  {r.time:.2f}s  ({r.strategy})")
            if save_example is not None and r.example is not None:
                typer.echo(f"example saved to {save_example}")
        from verifier.cli import save_example_file

        save_example_file(save_example, r.example)
        return
    indices, images, labels = embedded_slice(net.input_shape, start, limit)
    rows = []
    if not as_json:
        typer.echo(f"{'index':>5} {'label':>5} {'adv':>4}  {'status':<10} {'lower':>10} {'upper':>10} {'time_s':>7}")
    try:
        for i in indices:
            y = int(labels[i]) if label is None else label
            r = verifier.min_distortion(net, images[i].reshape(net.input_shape), norm=norm, label=y, targets=targets,
                                        eps_max=eps_max, timeout=options.timeout, strategy=strategy, options=options)
            rows.append((i, r))
            if not as_json:
                adv = "-" if r.adversarial_label is None else r.adversarial_label
                typer.echo(f"{i:>5} {r.label:>5} {adv:>4}  {r.status:<10} {r.lower:>10.6g} {r.upper:>10.6g} {r.time:>7.2f}")
    except KeyboardInterrupt:
        typer.echo("interrupted: summary of the samples that finished", err=True)
    counts = {s: sum(r.status == s for _, r in rows) for s in ("optimal", "infeasible", "unknown")}
    if as_json:
        typer.echo(json.dumps({"summary": {"samples": len(rows), "norm": norm, **counts},
                               "results": [{"index": i, **r.to_dict()} for i, r in rows]}))
    else:
        typer.echo(f"summary: {len(rows)} samples, {norm}: {counts['optimal']} optimal, "
                   f"{counts['infeasible']} infeasible, {counts['unknown']} unknown")
    sys.stdout.flush()
