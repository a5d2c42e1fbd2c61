"""Run a VNN-COMP benchmark folder (instances.csv + onnx/ + vnnlib/) and score it.

    python benchmarks/vnncomp.py ../shared/benchmarks/vnncomp2021/mnistfc --out benchmarks/out/mnistfc.csv
    python benchmarks/vnncomp.py BENCH --filter 256x2 --timeout-scale 0.5 --workers 2

Each instance runs with its own timeout (times --timeout-scale); its time includes loading the
model and parsing the property. Every finished instance is appended to the CSV at once (and
fsync'ed), so an interrupted run resumes where it stopped: rows already in the CSV are skipped.
Scoring follows VNN-COMP: +10 per correct sat/unsat, -150 per wrong one; without --reference
(a CSV of network,property,expected) every answer is assumed correct and the score is an upper
bound.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

FIELDS = ["network", "property", "timeout", "result", "time", "decided_by", "margin_lower", "margin_upper",
          "engine", "bab_domains", "memory_full", "peak_mb"]


def run_instance(bench: str, network: str, prop: str, timeout: float, settings: dict) -> dict:
    """One instance, in a worker process (HiGHS threads=1)."""
    import verifier
    from verifier.errors import one_line
    from verifier.vnncomp import result_word

    start = time.perf_counter()
    stats: dict = {}
    try:
        net = verifier.load(Path(bench) / network)
        spec = verifier.Property.from_vnnlib(Path(bench) / prop)
        r = verifier.check(net, spec, timeout=max(timeout - (time.perf_counter() - start), 1e-3),
                           options=verifier.VerifyOptions(**settings))
        word, by, lo, hi, stats = result_word(r), r.decided_by, r.margin_lower, r.margin_upper, r.stats
    except verifier.VerifierError as e:
        word, by, lo, hi = "error", str(e), float("nan"), float("nan")
    except Exception as e:  # a bug costs this instance (an `error` row), never the run
        word, lo, hi = "error", float("nan"), float("nan")
        by = f"internal error: {one_line(e)}"
    return {"network": network, "property": prop, "timeout": timeout, "result": word,
            "time": round(time.perf_counter() - start, 3), "decided_by": by,
            "margin_lower": lo, "margin_upper": hi, "engine": stats.get("engine", ""),
            "bab_domains": stats.get("bab_domains", 0), "memory_full": stats.get("bab_memory_full", 0),
            # peak resident memory of this process, which ran this instance alone (see run_pool)
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _die_with_parent(parent: int) -> None:
    """In an instance's process: exit once the harness that started it is gone (killed), rather
    than run on for up to its timeout with nobody to record the row."""
    from verifier.lifetime import die_with_parent

    die_with_parent(parent)


def run_pool(bench: str, todo: list, workers: int, settings: dict, record) -> list:
    """Runs `todo` on a pool of `workers` processes, recording each row as it finishes (a kill
    loses only those in flight); returns the instances left unfinished when a worker process
    died (killed, or out of memory), which breaks the whole pool."""
    finished = set()
    try:
        # One process per instance (spawned: max_tasks_per_child needs it), so that its peak
        # memory is the instance's own; the import it repeats is not in the instance's time.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 max_tasks_per_child=1, initializer=_die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(run_instance, bench, n, q, t, settings): (n, q, t) for n, q, t in todo}
            for fut in as_completed(futures):
                try:
                    row = fut.result()
                except BrokenProcessPool:
                    continue
                finished.add(futures[fut])
                record(row)
    except BrokenProcessPool:
        pass
    return [item for item in todo if item not in finished]


def run_all(bench: str, todo: list, workers: int, settings: dict, record) -> None:
    """Every instance gets a row. After a worker dies, the unfinished instances run one at a
    time, so that the one that kills its process is found: it gets an `error` row and the
    rest go on at full width."""
    width = workers
    while todo:
        unfinished = run_pool(bench, todo, width, settings, record)
        if not unfinished:
            return
        if width == 1:
            n, q, t = unfinished[0]
            record({"network": n, "property": q, "timeout": t, "result": "error", "time": float(t),
                    "decided_by": "the worker process died (killed, or out of memory)",
                    "margin_lower": float("nan"), "margin_upper": float("nan")})
            todo, width = unfinished[1:], workers
        else:
            todo, width = unfinished, 1


def read_instances(bench: Path, pattern: str | None) -> list[tuple[str, str, float]]:
    rows = []
    with open(bench / "instances.csv", newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 3 and (pattern is None or pattern in row[0] or pattern in row[1]):
                rows.append((row[0].strip(), row[1].strip(), float(row[2])))
    return rows


def read_done(out: Path) -> dict[tuple[str, str], dict]:
    if not out.exists():
        return {}
    with open(out, newline="") as f:
        return {(r["network"], r["property"]): r for r in csv.DictReader(f)}


def append(out: Path, row: dict) -> None:
    """One row more in `out`, in the columns of its header (a run resumed from an older file
    keeps that file's columns)."""
    new = not out.exists() or out.stat().st_size == 0
    fields = FIELDS
    if not new:
        with open(out, newline="") as f:
            fields = next(csv.reader(f))
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def summarise(rows: list[dict], reference: dict | None) -> None:
    by_net: dict[str, list[dict]] = {}
    for r in rows:
        by_net.setdefault(r["network"], []).append(r)
    print(f"{'network':<28} {'n':>3} {'sat':>4} {'unsat':>5} {'timeout':>7} {'unknown':>7} {'error':>5} "
          f"{'total_s':>8} {'median_s':>8}")
    score = wrong = unchecked = 0
    for net, rs in sorted(by_net.items()) + [("all", rows)]:
        count = {k: sum(r["result"] == k for r in rs) for k in ("sat", "unsat", "timeout", "unknown", "error")}
        times = [float(r["time"]) for r in rs]
        print(f"{Path(net).name:<28} {len(rs):>3} {count['sat']:>4} {count['unsat']:>5} {count['timeout']:>7} "
              f"{count['unknown']:>7} {count['error']:>5} {sum(times):>8.1f} {statistics.median(times):>8.2f}")
    for r in rows:
        if r["result"] in ("sat", "unsat"):
            expected = reference.get((r["network"], r["property"])) if reference else None
            if expected not in ("sat", "unsat"):  # no reference, nobody answered, or tools disagree
                unchecked += reference is not None
                expected = None
            if expected is not None and expected != r["result"]:
                wrong += 1
                score -= 150
                print(f"WRONG: {r['network']} {r['property']}: {r['result']}, expected {expected}")
            else:
                score += 10
    note = "" if reference else " (no reference given: assumes every answer is correct)"
    checked = f"{wrong} ({unchecked} answers without a reference answer)" if reference else "not checked"
    print(f"score: {score}{note}; wrong answers: {checked}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", type=Path)
    p.add_argument("--out", type=Path, default=None, help="results CSV (default: benchmarks/out/<bench>.csv)")
    p.add_argument("--timeout-scale", type=float, default=1.0)
    p.add_argument("--cap", type=float, default=None, help="cap every timeout at this many seconds")
    p.add_argument("--filter", default=None, help="only rows whose network or property contains this")
    p.add_argument("--workers", type=int, default=1, help="instances run in parallel (one core each)")
    p.add_argument("--reference", type=Path, default=None)
    p.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                   help="a VerifyOptions field, e.g. --set disjunctions=joint (repeatable)")
    args = p.parse_args()
    from verifier.options import parse_setting

    settings = dict(parse_setting(item) for item in args.set)
    out = args.out or Path(__file__).parent / "out" / f"{args.bench.name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    instances = read_instances(args.bench, args.filter)
    done = read_done(out)
    cap = args.cap if args.cap is not None else float("inf")
    todo = [(n, q, min(t * args.timeout_scale, cap)) for n, q, t in instances if (n, q) not in done]
    print(f"{len(instances)} instances, {len(instances) - len(todo)} already in {out}, {len(todo)} to run", flush=True)

    def record(row: dict) -> None:
        append(out, row)
        print(f"{row['network']:<28} {row['property']:<28} {row['result']:<8} {row['time']:>8.2f}s "
              f"{row['decided_by']}", flush=True)

    run_all(str(args.bench), todo, max(args.workers, 1), settings, record)
    reference = None
    if args.reference:
        with open(args.reference, newline="") as f:
            reference = {(r[0], r[1]): r[2].strip() for r in csv.reader(f) if len(r) >= 3}
    wanted = {(n, q) for n, q, _ in instances}
    summarise([r for k, r in read_done(out).items() if k in wanted], reference)


if __name__ == "__main__":
    main()
