"""The minimum-distortion result: certified interval, best example, and how it was reached."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from verifier.result import _num


@dataclass
class DistortionResult:
    status: str  # "optimal" | "infeasible" (none within eps_max and the domain) | "unknown"
    norm: str
    label: int
    lower: float  # certified: every adversarial example is at least this far (inf if infeasible)
    upper: float  # distance of `example` (inf if none found)
    example: np.ndarray | None  # shaped like the input; onnxruntime classifies it into a target
    adversarial_label: int | None  # onnxruntime's top class at the example
    targets: tuple[int, ...]
    time: float
    strategy: str
    stats: dict = field(default_factory=dict)

    def to_dict(self, with_example: bool = False) -> dict:
        out = {"status": self.status, "norm": self.norm, "label": self.label, "lower": _num(self.lower),
               "upper": _num(self.upper), "adversarial_label": self.adversarial_label,
               "targets": list(self.targets), "time": round(self.time, 4), "strategy": self.strategy,
               "stats": self.stats}
        if with_example and self.example is not None:
            out["example"] = self.example.ravel().tolist()
        return out
