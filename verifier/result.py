"""Typed results: the verdict, its evidence and the bounds reached."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Status(str, enum.Enum):
    ROBUST = "robust"  # proven: no input in the set changes the decision
    ADVERSARIAL = "adversarial"  # a counterexample, re-checked by onnxruntime
    UNKNOWN = "unknown"  # time ran out or numerics too close to call

    def __str__(self) -> str:
        return self.value


@dataclass
class Result:
    status: Status
    label: int | None  # None for general (VNN-LIB) properties
    prediction: int  # the network's decision on the clean input (the reference point)
    # Bounds on min over the set of the property's slack (robustness: logit[label] - max other;
    # <= 0 means violated): a proven lower bound, and the value at the best point found.
    margin_lower: float
    margin_upper: float
    counterexample: np.ndarray | None
    adversarial_label: int | None
    time: float
    decided_by: str  # "clean", "bounds", "lp", "attack", "mip", "timeout", ...
    stats: dict = field(default_factory=dict)
    counterexample_outputs: np.ndarray | None = None  # onnxruntime's outputs at the counterexample

    def to_dict(self, with_counterexample: bool = False) -> dict:
        out = {
            "status": self.status.value,
            "label": self.label,
            "prediction": self.prediction,
            "margin_lower": _num(self.margin_lower),
            "margin_upper": _num(self.margin_upper),
            "adversarial_label": self.adversarial_label,
            "time": round(self.time, 4),
            "decided_by": self.decided_by,
            "stats": self.stats,
        }
        if with_counterexample and self.counterexample is not None:
            out["counterexample"] = self.counterexample.ravel().tolist()
        return out


def _num(v: float):
    v = float(v)
    return v if np.isfinite(v) else (None if np.isnan(v) else ("inf" if v > 0 else "-inf"))
