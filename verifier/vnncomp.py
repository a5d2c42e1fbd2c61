"""VNN-COMP result files: the verdict word and, for `sat`, the counterexample."""

from __future__ import annotations

import numpy as np

from verifier.result import Result, Status


def result_word(r: Result) -> str:
    """sat (a violation, confirmed), unsat (proven), timeout, or unknown (gave up early)."""
    if r.status == Status.ADVERSARIAL:
        return "sat"
    if r.status == Status.ROBUST:
        return "unsat"
    return "timeout" if r.decided_by == "timeout" else "unknown"


def format_result(r: Result) -> str:
    """The text of a VNN-COMP result file: `sat` then ((X_0 v) ... (Y_0 v) ...), or one word."""
    word = result_word(r)
    if word != "sat":
        return word + "\n"
    x = np.asarray(r.counterexample, dtype=np.float64).ravel()
    y = np.asarray(r.counterexample_outputs, dtype=np.float64).ravel()
    lines = [f"(X_{i} {v!r})" for i, v in enumerate(x.tolist())]
    lines += [f"(Y_{j} {v!r})" for j, v in enumerate(y.tolist())]
    return "sat\n(" + "\n ".join(lines) + ")\n"
