"""How a batch report shows values and groups samples, shared by its summary, prose and table.

One place decides the words and the grouping, so that the page, summary.json and the
per-sample table can never disagree: a missing number is shown as "—" (never Python's `None`
or `nan`), a distortion is "proven minimal" only when its interval is closed, a misclassified
sample is told apart from a real attack, and a sample's time is its verification plus its
distortion search.
"""

from __future__ import annotations

import math

DASH = "—"
NORMS = {"linf": "L∞", "l1": "L1", "l2": "L2", "l0": "L0"}

#: distortion_status -> the words for it (verifier/distortion/result.py defines the statuses).
DISTORTION_WORDS = {"optimal": "proven minimal", "unknown": "best found", "infeasible": "none within the search set"}


def number(value, digits: int = 4) -> str:
    """`digits` significant digits, or "—" for a missing or non-finite value."""
    if value is None:
        return DASH
    value = float(value)
    if not math.isfinite(value):
        return DASH
    return f"{value:.{digits}g}"


def seconds(value) -> str:
    """A duration for prose and cells: milliseconds stay visible, "—" when missing."""
    if value is None or not math.isfinite(float(value)):
        return DASH
    value = float(value)
    return f"{value:.3g}" if value < 100 else f"{value:.1f}"


def share(value) -> str:
    return DASH if value is None else f"{value:.2%}"


def norm_name(norm: str | None) -> str:
    return NORMS.get(str(norm), str(norm)) if norm else DASH


def misclassified(row: dict) -> bool:
    """The network gets the clean sample wrong: its "adversarial example" is the sample itself."""
    return row.get("prediction") is not None and row["prediction"] != row["label"]


def decided_group(row: dict) -> str:
    """How a sample was decided, for counting and filtering: the stage's name, with every
    internal error (whose message follows "error:") counted as one group "error", and every
    answer implied by another radius's verdict as one group "implied"."""
    how = row.get("decided_by")
    if not how:
        return "none"
    if str(how).startswith("implied by"):  # a run at several radii: "implied by eps=0.1"
        return "implied"
    return "error" if str(how).startswith("error") else str(how)


def sample_time(row: dict) -> float:
    """Seconds a sample took: its verification plus its minimum-distortion search, if asked."""
    return float(row.get("time") or 0.0) + float(row.get("distortion_time") or 0.0)


def distortion_state(row: dict) -> str:
    """A sample's distortion in words: "proven minimal" only when its interval is closed."""
    status = row.get("distortion_status")
    if not status:
        return DASH
    if status == "unknown" and row.get("distortion_upper") is None:
        return "open, none found"
    return DISTORTION_WORDS.get(status, str(status))


def workers_of(summary: dict) -> int:
    """Processes that ran samples at once: the serial executor runs one, whatever `workers` says."""
    if summary.get("executor") == "serial":
        return 1
    return max(1, int(summary.get("workers") or 1))
