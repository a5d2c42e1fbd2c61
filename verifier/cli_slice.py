"""The table modes' loop over the embedded MNIST slice (`verify model.onnx`, one eps or several):
a row per sample as it finishes, a transient bar on a TTY, each example exported at once (kept
if the run is interrupted), and Ctrl-C ending the loop with the finished rows kept."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from verifier.data import embedded_slice


def over_slice(net, start: int, limit: int, label: Optional[int], as_json: bool, header: str,
               check: Callable, line: Callable, example: Callable, save_examples: Optional[Path],
               describe: Callable | None = None) -> tuple[list, list]:
    """(rows, saved): `check(x, y)` for each sample (y the given label, else the slice's), rows
    as (index, result); `line(result)` prints a finished row (not with --json); `example(result)`
    is None or (eps, Result) whose counterexample --save-examples writes; `describe(rows)` is the
    bar's text."""
    from rich.progress import Progress

    indices, images, labels = embedded_slice(net.input_shape, start, limit)
    rows, saved = [], []
    if not as_json:
        typer.echo(header)
    try:
        with Progress(transient=True, console=None, disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task("verifying", total=len(indices))
            for i in indices:
                y = int(labels[i]) if label is None else label
                result = check(images[i].reshape(net.input_shape), y)
                rows.append((i, result))
                found = example(result)
                if save_examples is not None and found is not None:
                    from verifier.batch.export import write_example

                    eps, r = found
                    saved.append(write_example(save_examples, i, r.label, images[i], net.input_shape, eps=eps,
                                               perturbed=r.counterexample, adversarial_label=r.adversarial_label))
                if not as_json:
                    progress.console.print(f"{i:>5} " + line(result), highlight=False)
                progress.update(task, advance=1, **({"description": describe(rows)} if describe else {}))
    except KeyboardInterrupt:
        typer.echo("interrupted: summary of the samples that finished", err=True)
    return rows, saved
