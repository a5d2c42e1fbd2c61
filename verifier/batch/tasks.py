"""One sample of a batch run, as executed by a worker: plain data in, plain data out.

A worker process (or Ray task) loads the network once from the ONNX bytes and keeps it, so
that only images travel per task. A failure inside one sample becomes an `unknown` row that
names the error, never a lost batch.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from verifier.errors import one_line
from verifier.options import VerifyOptions


@dataclass(frozen=True)
class Job:
    """What every sample of the run is asked (the same for all of them)."""

    eps: float | tuple[float, ...]  # a tuple: several radii (ascending), one row per radius
    options: VerifyOptions  # its timeout is the per-sample time for the verdict (all radii together)
    distortion: str | None = None  # also compute the minimum distortion in this norm
    eps_max: float | None = None  # the distortion search's L-infinity ball (None: the domain)


_NETS: dict[str, object] = {}  # per worker process: ONNX sha256 -> Network


def network(onnx_bytes: bytes):
    from verifier.api import load

    key = hashlib.sha256(onnx_bytes).hexdigest()
    if key not in _NETS:
        _NETS[key] = load(onnx_bytes)
    return _NETS[key]


def certify_sample(onnx_bytes: bytes, job: Job, index: int, image: np.ndarray, label: int):
    """(row, arrays) for one sample; see store.COLUMNS and store.ARRAYS. At several radii the
    row holds the sample's rows, one per radius, under "radii" (see `rows_of`)."""
    start = time.perf_counter()
    try:
        return _certify(network(onnx_bytes), job, index, image, label)
    except Exception as e:  # a bug must cost one sample, not the run: record it as unknown
        message = f"error: {one_line(e)}"
        row = {"index": index, "label": label, "prediction": None, "verdict": "unknown", "decided_by": message,
               "solver_status": "error", "time": round(time.perf_counter() - start, 4)}
        return row, {}


def _certify(net, job: Job, index: int, image: np.ndarray, label: int):
    from verifier.api import verify
    from verifier.result import Status

    x = np.asarray(image, dtype=np.float64).reshape(net.input_shape)
    if isinstance(job.eps, tuple):
        return _certify_radii(net, job, index, x, label)
    r = verify(net, x, job.eps, label=int(label), options=job.options)
    row = _row(index, label, r)
    arrays = {"counterexample": r.counterexample}
    if job.distortion is not None:
        from verifier.distortion.minimum import min_distortion

        # the verdict's answer is not searched again: robust at eps bounds the distortion from below,
        # a counterexample from above
        d = min_distortion(net, x, job.distortion, label=int(label), eps_max=job.eps_max, options=job.options,
                           robust_radius=job.eps if r.status == Status.ROBUST else None,
                           counterexample=r.counterexample)
        row.update(distortion_norm=job.distortion, distortion_status=d.status, distortion_lower=_finite(d.lower),
                   distortion_upper=_finite(d.upper), distortion_label=d.adversarial_label,
                   distortion_time=round(d.time, 4))
        arrays["distortion_example"] = d.example
    return row, arrays


def _row(index: int, label: int, r) -> dict:
    """The stored row of one verdict (a Result)."""
    from verifier.result import Status

    if r.status == Status.UNKNOWN:
        solver_status = "time_limit" if r.decided_by == "timeout" else "undecided"
    else:
        solver_status = "proved" if r.status == Status.ROBUST else "counterexample"
    return {"index": index, "label": int(label), "prediction": r.prediction, "verdict": r.status.value,
            "margin_lower": _finite(r.margin_lower), "margin_upper": _finite(r.margin_upper),
            "adversarial_label": r.adversarial_label, "decided_by": r.decided_by, "solver_status": solver_status,
            "time": round(r.time, 4)}


def _certify_radii(net, job: Job, index: int, x: np.ndarray, label: int):
    """Several radii (verifier/radii.py: one time limit for all, answers implying others): a row
    per radius. The minimum distortion (if asked) does not depend on eps: it is computed once and
    kept on the row of the smallest radius, so that every time is counted once."""
    from verifier.radii import verify_radii

    rr = verify_radii(net, x, list(job.eps), label=int(label), options=job.options)
    rows = [({**_row(index, label, r), "eps": eps}, {"counterexample": r.counterexample}) for eps, r in rr]
    if job.distortion is not None:
        from verifier.distortion.minimum import min_distortion

        robust = [eps for eps, r in rr if r.status.value == "robust"]
        found = rr.example()
        d = min_distortion(net, x, job.distortion, label=int(label), eps_max=job.eps_max, options=job.options,
                           robust_radius=max(robust) if robust else None,
                           counterexample=None if found is None else found[1].counterexample)
        rows[0][0].update(distortion_norm=job.distortion, distortion_status=d.status,
                          distortion_lower=_finite(d.lower), distortion_upper=_finite(d.upper),
                          distortion_label=d.adversarial_label, distortion_time=round(d.time, 4))
        rows[0][1]["distortion_example"] = d.example
    return {"index": index, "label": int(label), "radii": rows}, {}


def rows_of(row: dict, arrays: dict, radii: tuple[float, ...] | None) -> list[tuple[dict, dict]]:
    """The stored rows of one task's result: its rows per radius, or the row itself (one radius,
    or an error row of a sample whose task failed, then one per radius with its eps)."""
    if "radii" in row:
        return row["radii"]
    if radii is None:
        return [(row, arrays)]
    return [({**row, "eps": eps}, arrays) for eps in radii]


def _finite(v: float) -> float | None:
    """Infinite bounds (nothing proven / nothing found) are stored as NULL."""
    v = float(v)
    return v if np.isfinite(v) else None
