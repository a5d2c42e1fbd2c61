"""Batch certification end to end, and a kill -9 in the middle of the same run.

    python benchmarks/batch_resume.py ../shared/benchmarks/mipverify/wk17a_linf0.1.onnx --eps 0.1 --limit 500 --out /tmp/batch

Runs the CLI (`verify MODEL --report ...`, all cores) three times: once straight through;
once killed with SIGKILL (workers included) after --kill-after seconds; and the same command
again, which resumes. Prints the summary counts and wall times, how many samples the killed run
had committed, and whether the resumed store equals the uninterrupted one (index, label,
prediction, verdict, adversarial label of every sample).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

KEY = '"index", label, prediction, verdict, adversarial_label'


def _cli(model, args, folder) -> list[str]:
    return [sys.executable, "-c", "from verifier.cli import main; main()", model, *args, "--report", str(folder), "--json"]


def _rows(folder: Path) -> list[tuple]:
    with sqlite3.connect(folder / "results.sqlite") as db:
        return db.execute(f'SELECT {KEY} FROM results ORDER BY "index"').fetchall()


def _run(command) -> tuple[dict, float]:
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout), time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--eps", default="0.1")
    p.add_argument("--limit", default="500")
    p.add_argument("--timeout", default="120")
    p.add_argument("--kill-after", type=float, default=10.0)
    p.add_argument("--out", default="/tmp/batch_resume")
    args = p.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    common = ["--eps", args.eps, "--limit", args.limit, "--timeout", args.timeout]

    whole, wall = _run(_cli(args.model, common, out / "whole"))
    print(f"uninterrupted: {whole['samples']} samples, {whole['robust']} robust, {whole['adversarial']} adversarial "
          f"({whole['misclassified']} misclassified), {whole['unknown']} unknown; wall {wall:.1f} s "
          f"({whole['workers']} workers)")

    folder = out / "killed"
    start = time.perf_counter()
    proc = subprocess.Popen(_cli(args.model, common, folder), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(args.kill_after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = time.perf_counter() - start
    committed = len(_rows(folder))
    resumed, second = _run(_cli(args.model, common, folder))
    same = _rows(folder) == _rows(out / "whole")
    print(f"killed (SIGKILL) after {first:.1f} s with {committed} samples committed; the rerun finished the other "
          f"{resumed['samples'] - committed} in {second:.1f} s; store equal to the uninterrupted run: {same}; "
          f"samples {resumed['samples']} (no duplicates: {len({r[0] for r in _rows(folder)}) == resumed['samples']})")


if __name__ == "__main__":
    main()
