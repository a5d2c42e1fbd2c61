"""The input-splitting stage of a region search (plan.input_split: properties over a handful of
inputs, such as ACAS Xu's five): branch and bound over the input box (bab/input_split.py) on
the bound engine's graph, in place of alpha-CROWN and the search over ReLU splits, whose bounds
over a wide box of a low-dimensional input stay hopelessly loose.
"""

from __future__ import annotations

import numpy as np
import torch

from verifier.bab.graph_problem import spec_rows
from verifier.bab.input_split import InputSplitSettings, Specs, input_branch_and_bound
from verifier.bab.search import add_stats
from verifier.bounds.walker import EXACT
from verifier.result import Result, Status
from verifier.search.bab_stages import spec_workers
from verifier.search.graph_stage import graph_of
from verifier.search.run_state import RunState


def free_inputs(run: RunState) -> int:
    """Inputs the region lets vary (a pinned one, lo = hi, is never split)."""
    box = run.region.box
    return int(np.count_nonzero(box.hi > box.lo))


def input_search(run: RunState, settings: InputSplitSettings) -> Result:
    """Decide the region by halving its box until every open disjunct is proven on each piece,
    or a piece's corner or centre violates one (onnxruntime's say, RunState.confirm); with
    options.processes > 1 the boxes are shared out over helper processes."""
    graph = graph_of(run)
    disjuncts = run.open()
    specs = Specs.of([spec_rows(run.disjuncts[d].C, run.disjuncts[d].d) for d in disjuncts])
    box = run.region.box
    evidence: list = []

    def confirm(x: torch.Tensor) -> bool:
        found = run.confirm(x.numpy().astype(np.float64))
        if found is not None:
            evidence.append(found)
        return found is not None

    args = (graph, specs, torch.as_tensor(box.lo, dtype=EXACT), torch.as_tensor(box.hi, dtype=EXACT),
            torch.as_tensor(run.lower[disjuncts], dtype=EXACT), run.options.tolerance, run.deadline, confirm, settings)
    workers = spec_workers(run.options)
    try:
        out = input_branch_and_bound(*args) if workers is None else workers.input_search(*args)
    finally:
        if workers is not None:
            workers.close()
    add_stats(run.stats, out.stats)
    if out.status == "counterexample" and evidence:
        return run.result(Status.ADVERSARIAL, "input_split", evidence[0])
    if out.status != "counterexample":  # a search stopped by a point proves nothing
        for d, value in zip(disjuncts, out.lower):
            run.prove(d, float(value))
    if not run.open():
        return run.result(Status.ROBUST, "input_split")
    run.stats["input_split_end"] = out.status
    ran_out = out.status == "timeout" or run.remaining() <= 0
    return run.result(Status.UNKNOWN, "timeout" if ran_out else "input_split")
