"""The `verify` command.

    verify model.onnx --eps 0.1                      # the embedded MNIST slice, a table
    verify model.onnx --eps 0.1 --input x.npy --json # one sample, one JSON object
    verify model.onnx --distortion l1 --input x.npy  # minimum adversarial distortion
    verify model.onnx --eps 0.1 --data test.npz --report out/ [--workers 8] [--executor ray]
                                                     # a test set: resumable, parallel, a report

User errors (bad options, files, shapes) print one line on stderr and exit with code 2; an
unexpected internal error prints one line naming the model and the error, keeps the traceback
in a log file, and exits with code 3; an interrupted table run still prints the rows and the
summary of what finished (exit code 130 for an interrupted batch).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

import verifier
from verifier.api import _spent
from verifier.errors import InputError, VerifierError, one_line
from verifier.options import VerifyOptions
from verifier.radii import eps_list
from verifier.vnncomp import format_result, result_word

app = typer.Typer(add_completion=False, help="Exact verification of ReLU networks (ONNX).")


#: Exit codes: 2 for a problem with the user's input, 3 for a bug of the verifier.
EXIT_USAGE, EXIT_INTERNAL = 2, 3


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _internal_error(error: Exception, files: list) -> None:
    """One line for an error the user cannot fix (a bug): what failed on which file, and where
    the traceback was kept for a bug report."""
    import tempfile
    import traceback

    named = ", ".join(str(f) for f in files if f is not None)
    where = ""
    try:
        with tempfile.NamedTemporaryFile("w", prefix="verify-error-", suffix=".log", delete=False) as log:
            log.write(traceback.format_exc())
        where = f" (traceback in {log.name})"
    except OSError:
        pass
    _fail(f"internal error on {named}: {one_line(error)}{where}", EXIT_INTERNAL)


def _check_output_path(path: Optional[Path], option: str) -> None:
    """Refuse an output file that cannot be written before any work is done, so that nothing
    computed is lost for a typo in a folder name."""
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder, expected a file name")
    if not parent.is_dir():
        raise InputError(f"{option} {path}: the folder {parent} does not exist")


def _load_input(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as e:  # corrupt or not a .npy file
        raise InputError(f"{path}: cannot read as a .npy array ({type(e).__name__}: {e})") from None


def _version_callback(value: bool) -> None:
    if value:
        from verifier.version import package_version

        typer.echo(package_version())
        raise typer.Exit(0)


def _config_callback(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """--config FILE (eager): the file's options become the defaults of this run's parsing, so
    that the command line still wins (verifier/cli_config.py)."""
    if value is not None:
        import typing

        from verifier.cli_config import read_config

        try:
            ctx.default_map = {**(ctx.default_map or {}),
                               **read_config(value, ctx.command.params, typing.get_type_hints(run))}
        except VerifierError as e:
            _fail(str(e))
    return value


@app.command()
def run(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="ONNX model file."),
    eps: str = typer.Option("0.1", help="L-infinity radius of the input ball, or several as a comma list (0.02,0.05,0.1): a verdict at each, and with --report the certified-accuracy curve."),
    input: Optional[Path] = typer.Option(None, "--input", help="One sample as .npy; default: the embedded MNIST slice."),
    label: Optional[int] = typer.Option(None, help="True label (default: the network's prediction)."),
    timeout: float = typer.Option(60.0, help="Seconds per sample."),
    limit: Optional[int] = typer.Option(None, help="Samples to verify (default: 10 of the embedded data; with --report, all)."),
    start: int = typer.Option(0, help="First sample of the data."),
    as_json: bool = typer.Option(False, "--json/--no-json", help="Print JSON instead of a table (--no-json: the table, also over a config file's json = true)."),
    save_example: Optional[Path] = typer.Option(None, help="Write the counterexample (.npy) if one is found."),
    vnnlib: Optional[Path] = typer.Option(None, help="A VNN-LIB property (.vnnlib or .vnnlib.gz) instead of an eps-ball."),
    result_file: Optional[Path] = typer.Option(None, "--result", help="With --vnnlib: write the VNN-COMP result file here."),
    distortion: Optional[str] = typer.Option(None, help="Compute the minimum adversarial distortion in this norm: linf, l1, l2 or l0."),
    target: Optional[List[int]] = typer.Option(None, help="With --distortion: a target class (repeat for a set); default any other class."),
    eps_max: Optional[float] = typer.Option(None, help="With --distortion: search only this L-infinity ball (default: the whole domain)."),
    strategy: str = typer.Option("auto", help="With --distortion: auto, direct (one MILP), bisection or hybrid (eps-ball verifications then the MILP; linf)."),
    report: Optional[Path] = typer.Option(None, help="Batch run: certify the data set, keep results and the report (HTML, CSV, JSON) in this folder; rerun to resume."),
    data: Optional[Path] = typer.Option(None, help="With --report: an .npz (images, labels) or a folder of .npy files with labels.npy (default: the embedded MNIST slice)."),
    workers: Optional[int] = typer.Option(None, help="With --report: parallel samples (default: one per core; one on a GPU)."),
    executor: str = typer.Option("process", help="With --report: process (local pool), ray (a Ray cluster) or serial."),
    address: Optional[str] = typer.Option(None, help="With --executor ray: the cluster address (default: start Ray locally)."),
    processes: int = typer.Option(1, help="Processes one sample's searches may share (an instance with the machine to itself, as in VNN-COMP); for batch runs use --workers."),
    solver: str = typer.Option("highs", help="MIP solver: highs (native, default), or through PuLP: cbc (bundled), gurobi, cplex, glpk, scip, xpress, copt, mosek, pulp-highs. Bounds always use HiGHS."),
    device: str = typer.Option("cpu", help="Where the bound engine runs: cpu, or cuda (cuda:N) where torch sees a GPU."),
    split: str = typer.Option("auto", help="What branch and bound splits: input (halve the input box), relu, or auto (the input on properties with at most 8 free inputs, such as ACAS Xu)."),
    save_examples: Optional[Path] = typer.Option(None, "--save-examples", help="Table and --report runs: write one .npz per sample with a counterexample into this folder (with --report on a finished folder, only that is done)."),
    rerun_unknown: bool = typer.Option(False, "--rerun-unknown", help="With --report: rerun only the folder's unknown samples (e.g. with a longer --timeout); every other row is kept."),
    mean: Optional[str] = typer.Option(None, help="The model expects normalised inputs (x - mean) / std: the mean, one value or one per channel (axis 1), e.g. 0.4914,0.4822,0.4465. eps, the [0, 1] domain and counterexamples stay in pixel units."),
    std: Optional[str] = typer.Option(None, help="With --mean: the standard deviation, one value or one per channel, e.g. 0.2470,0.2435,0.2616."),
    config: Optional[Path] = typer.Option(None, callback=_config_callback, is_eager=True, help="A TOML file of options (keys: the option names, e.g. eps = 0.1, eps-max = 0.3, json = true); the command line wins. A --report run writes its options to FOLDER/run.toml, which repeats it."),
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Verify MODEL on one sample (--input), a VNN-LIB property (--vnnlib) or the embedded MNIST slice."""
    began = time.perf_counter()
    try:
        radii = eps_list(eps, "--eps")
        several = len(radii) > 1
        if several and vnnlib is not None:
            raise InputError(f"--eps {eps}: several radii do not apply to --vnnlib (the property sets the input box)")
        if several and distortion is not None and report is None:
            raise InputError(f"--eps {eps}: several radii do not apply to --distortion on its own (it finds the "
                             "smallest radius itself); with --report FOLDER both are computed")
        if not np.isfinite(timeout) or timeout <= 0:
            raise InputError(f"--timeout must be positive, got {timeout}")
        if limit is not None and limit < 1:
            raise InputError(f"--limit must be >= 1, got {limit}")
        if start < 0:
            raise InputError(f"--start must be >= 0, got {start}")
        if result_file is not None and vnnlib is None:
            raise InputError("--result writes a VNN-COMP result file: it needs --vnnlib PROPERTY")
        _check_output_path(save_example, "--save-example")
        _check_batch_outputs(save_example, save_examples, rerun_unknown, report, input, vnnlib, distortion)
        _check_output_path(result_file, "--result")
        # First: a bad --solver, --processes, --device or --split fails fast.
        options = VerifyOptions(timeout=timeout, solver=solver, processes=processes, device=device, split=split)
        if mean is None and std is None:
            net = verifier.load(model)
        else:
            from verifier.importers.normalisation import load_normalised

            net = load_normalised(model, None, mean, std, names=("--mean", "--std"))
        if data is not None and report is None:
            raise InputError("--data needs --report FOLDER (a batch run keeps its results there)")
        if report is not None and processes != 1:
            raise InputError("--processes is for one sample or property; a batch run (--report) shares samples "
                             "over --workers")
        if report is not None:
            from verifier.cli_batch import batch_command

            code = batch_command(net, radii if several else radii[0], data, report, start, limit, timeout, workers,
                                 executor, address, distortion, eps_max, as_json, options, save_examples,
                                 rerun_unknown)
            if not rerun_unknown:  # a rerun's new timeout is not the folder's setting: run.toml stays
                from verifier.cli_config import write_run_config
                from verifier.version import package_version

                write_run_config(report / "run.toml", ctx.command.params, ctx.params, package_version())
            raise typer.Exit(code)
        if distortion is not None:
            from verifier.cli_distortion import distortion_command

            distortion_command(net, distortion, input and _load_input(input), label, target or None, eps_max,
                               strategy, options, as_json, save_example, limit or 10, start)
        elif vnnlib is not None:
            _property(net, vnnlib, options, result_file, as_json, began)
        elif several:
            from verifier.cli_radii import single_radii, table_radii

            if input is not None:
                single_radii(net, _load_input(input), radii, label, _spent(options, began), as_json, save_example)
            else:
                table_radii(net, radii, label, options, as_json, limit or 10, start, save_examples)
        elif input is not None:
            _single(net, _load_input(input), radii[0], label, _spent(options, began), as_json, save_example)
        else:
            _table(net, radii[0], label, options, as_json, limit or 10, start, save_examples)
    except VerifierError as e:
        _fail(str(e))
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as e:  # a bug: one line, never a traceback on the user's terminal
        _internal_error(e, [model, vnnlib or input or data])


def _check_batch_outputs(save_example, save_examples, rerun_unknown, report, input, vnnlib, distortion) -> None:
    """The options of many samples with the runs they belong to (none is silently ignored);
    the examples' folder is created now, before any work."""
    if report is not None and save_example is not None:
        raise InputError("--save-example FILE is for one sample (--input); with --report use --save-examples FOLDER")
    if rerun_unknown and report is None:
        raise InputError("--rerun-unknown needs --report FOLDER (the folder of the run whose unknown samples to rerun)")
    if save_examples is not None and report is None and (input or vnnlib or distortion) is not None:
        raise InputError("--save-examples FOLDER is for the table and --report runs; for one sample use "
                         "--save-example FILE, for a distortion table add --report FOLDER")
    if save_examples is not None:
        from verifier.batch.export import prepare_folder

        prepare_folder(save_examples)


def save_example_file(path: Optional[Path], example) -> None:
    """Write an example after its result was printed: a failed write is the user's one-line
    error (exit 2), and the verdict already on screen is not lost."""
    if path is None or example is None:
        return
    try:
        np.save(path, example)
    except OSError as e:
        raise InputError(f"--save-example {path}: cannot write the example: {e.strerror}") from None


def _single(net, x, eps, label, options, as_json, save_example) -> None:
    r = verifier.verify(net, x, eps, label=label, timeout=options.timeout, options=options)
    if as_json:
        typer.echo(json.dumps(r.to_dict(with_counterexample=False)))
    else:
        typer.echo(f"{r.status.value}  label={r.label} prediction={r.prediction} "
                   f"margin in [{r.margin_lower:.4g}, {r.margin_upper:.4g}]  {r.time:.2f}s  ({r.decided_by})")
        if r.adversarial_label is not None:
            typer.echo(f"counterexample classified as {r.adversarial_label}"
                       + (f", saved to {save_example}" if save_example else ""))
    save_example_file(save_example, r.counterexample)


def _property(net, path, options, result_file, as_json, began: float) -> None:
    prop = verifier.Property.from_vnnlib(path)
    options = _spent(options, began)
    r = verifier.check(net, prop, timeout=options.timeout, options=options)
    text = format_result(r)
    if result_file is not None:
        try:
            result_file.write_text(text)
        except OSError as e:
            raise InputError(f"{result_file}: cannot write the result: {e.strerror}") from None
    if as_json:
        typer.echo(json.dumps({"result": result_word(r), **r.to_dict()}))
    else:
        typer.echo(text, nl=False)
        typer.echo(f"; {r.status.value} in {r.time:.2f}s ({r.decided_by}), "
                   f"least slack in [{r.margin_lower:.4g}, {r.margin_upper:.4g}]", err=True)


def _table(net, eps, label, options, as_json, limit, start, save_examples=None) -> None:
    from verifier.cli_slice import over_slice

    header = f"{'index':>5} {'label':>5} {'pred':>4}  {'status':<11} {'margin_lower':>12} {'margin_upper':>12} {'time_s':>7}  decided_by"
    counts = {"robust": 0, "adversarial": 0, "unknown": 0}  # kept as rows finish, for the bar

    def check(x, y):
        r = verifier.verify(net, x, eps, label=y, timeout=options.timeout, options=options)
        counts[r.status.value] += 1
        return r

    rows, saved = over_slice(
        net, start, limit, label, as_json, header, check=check,
        line=lambda r: (f"{r.label:>5} {r.prediction:>4}  {r.status.value:<11} {r.margin_lower:>12.4g} "
                        f"{r.margin_upper:>12.4g} {r.time:>7.3f}  {r.decided_by}"),
        example=lambda r: None if r.counterexample is None else (eps, r),
        save_examples=save_examples,
        describe=lambda rows: " ".join(f"{k} {v}" for k, v in counts.items()))
    times = [r.time for _, r in rows]
    summary = {"samples": len(rows), **counts, "eps": eps,
               "total_time": round(sum(times), 3), "median_time": round(float(np.median(times)), 4) if times else None}
    if as_json:
        typer.echo(json.dumps({"summary": summary, "results": [{"index": i, **r.to_dict()} for i, r in rows]}))
    else:
        typer.echo(f"summary: {summary['samples']} samples, eps={eps}: {counts['robust']} robust, "
                   f"{counts['adversarial']} adversarial, {counts['unknown']} unknown; "
                   f"total {summary['total_time']:.2f}s, median {summary['median_time']}s")
        if save_examples is not None:
            typer.echo(f"examples: {len(saved)} file(s) in {save_examples}")


def main() -> None:
    """Runs the command. A usage error (an option's value that is not a number, an unknown
    option) is one line and exit code 2, like every other bad input, instead of Typer's
    boxed panel."""
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        # click's (or Typer's vendored click's) ClickException: UsageError has exit code 2.
        if not hasattr(e, "format_message"):
            raise
        message = " ".join(e.format_message().split())
        typer.echo(f"error: {message}", err=True)
        sys.exit(EXIT_USAGE if getattr(e, "exit_code", 1) in (1, 2) else e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
