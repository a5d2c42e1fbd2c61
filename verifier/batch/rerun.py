"""Rerunning the `unknown` samples of a results folder with another timeout (MIPVerify's
`solve_rerun_option`), without recomputing or losing anything else.

Only the per-sample timeout may change: every other setting must equal the folder's, or the rows
would answer different questions. At several radii a rerun works per (sample, eps): each sample
with an unknown row runs again at all its radii (one timeout for all, as in the run), and only
its unknown rows are replaced or merged; its decided rows stay as they were. The folder keeps
its settings (a plain resume with the original command still works); each rerun is recorded in
the store's metadata (`reruns`: timeout, start time, samples, how many finished) and in
summary.json. A rerun row replaces the old one in its own transaction, so an interrupted rerun
leaves each row either old or new.
"""

from __future__ import annotations

from pathlib import Path

from verifier.errors import InputError

#: The one setting a rerun may change.
RERUN_MAY_DIFFER = frozenset({"options.timeout"})


def check_rerun_folder(report: str | Path | None) -> None:
    """A rerun needs a folder with results (never creates one)."""
    if report is None:
        raise InputError("rerun_unknown needs the report folder of an earlier run (--report FOLDER)")
    if not (Path(report) / "results.sqlite").is_file():
        raise InputError(f"{report}: no results.sqlite there, nothing to rerun (run without --rerun-unknown first)")


def unknown_rows(rows: list[dict]) -> dict[tuple[int, float], dict]:
    """(index, eps) -> stored row, for the rows a rerun takes again (errors are unknown too)."""
    return {(r["index"], r["eps"]): r for r in rows if r["verdict"] == "unknown"}


def rerun_rows(previous: dict[tuple[int, float], dict], sample: list[tuple[dict, dict]],
               eps) -> list[tuple[dict, dict]]:
    """The rows to store for one rerun sample (`sample`: its new rows, one per radius; a row
    without "eps" is at the run's one radius `eps`): each row that was unknown, merged with its
    old one; a row decided before the rerun is not touched (both answers are sound, so they
    agree, and the old one is kept as it was)."""
    out = []
    for row, arrays in sample:
        key = (row["index"], row.get("eps", eps))
        if key in previous:
            out.append(merged(previous[key], row, arrays))
    return out


def merged(old: dict, row: dict, arrays: dict) -> tuple[dict, dict]:
    """The row to store for a rerun sample. A decided verdict replaces the old row. A new error
    keeps the old row (its bounds say more than an error). A result still unknown keeps, on
    each side, the tighter of the two margin bounds: both are valid bounds on the same minimum
    (same sample, label and eps), so nothing the first run proved is lost."""
    if row["verdict"] != "unknown":
        return row, arrays
    if row.get("solver_status") == "error" and old.get("solver_status") != "error":
        return {k: v for k, v in old.items() if k not in ("counterexample", "distortion_example")}, {
            "counterexample": old.get("counterexample"), "distortion_example": old.get("distortion_example")}
    row = dict(row)
    lows = [v for v in (old.get("margin_lower"), row.get("margin_lower")) if v is not None]
    highs = [v for v in (old.get("margin_upper"), row.get("margin_upper")) if v is not None]
    row["margin_lower"] = max(lows) if lows else None
    row["margin_upper"] = min(highs) if highs else None
    return row, arrays
