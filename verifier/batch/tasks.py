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

    eps: float
    options: VerifyOptions  # its timeout is the per-sample time for the verdict
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
    """(row, arrays) for one sample; see store.COLUMNS and store.ARRAYS."""
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
    r = verify(net, x, job.eps, label=int(label), options=job.options)
    if r.status == Status.UNKNOWN:
        solver_status = "time_limit" if r.decided_by == "timeout" else "undecided"
    else:
        solver_status = "proved" if r.status == Status.ROBUST else "counterexample"
    row = {"index": index, "label": int(label), "prediction": r.prediction, "verdict": r.status.value,
           "margin_lower": _finite(r.margin_lower), "margin_upper": _finite(r.margin_upper),
           "adversarial_label": r.adversarial_label, "decided_by": r.decided_by, "solver_status": solver_status,
           "time": round(r.time, 4)}
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


def _finite(v: float) -> float | None:
    """Infinite bounds (nothing proven / nothing found) are stored as NULL."""
    v = float(v)
    return v if np.isfinite(v) else None
