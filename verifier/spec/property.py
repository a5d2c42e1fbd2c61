"""Properties as plain data: input regions, each with an output condition describing a
*violation* as a disjunction of conjunctions of linear inequalities (the VNN-LIB reading).

For a conjunction C @ y <= d its *slack* is s(y) = max_k (C_k @ y - d_k): the conjunction holds
exactly when s <= 0. Robustness of `label` is the disjunction over j != label of
y_label - y_j <= 0, whose slacks are the label margins — so ties count as violations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from verifier.spec.ball import InputBox


@dataclass
class Conjunction:
    """All rows of C @ y <= d hold (a violation of the property)."""

    C: np.ndarray  # (k, outputs)
    d: np.ndarray  # (k,)

    def __post_init__(self) -> None:
        self.C = np.atleast_2d(np.asarray(self.C, dtype=np.float64))
        self.d = np.asarray(self.d, dtype=np.float64).ravel()

    def slack(self, y: np.ndarray) -> np.ndarray:
        """max_k (C_k @ y - d_k) for a batch of outputs y (B, outputs)."""
        return (np.atleast_2d(y) @ self.C.T - self.d).max(axis=1)


@dataclass
class InputRegion:
    box: InputBox
    disjuncts: list[Conjunction]


@dataclass
class Property:
    """Violated iff some region holds an input whose output satisfies one of its disjuncts."""

    regions: list[InputRegion]
    num_inputs: int
    num_outputs: int
    name: str = "property"
    label: int | None = None  # set for robustness properties
    info: dict = field(default_factory=dict)

    @staticmethod
    def robustness(box: InputBox, label: int, num_outputs: int) -> "Property":
        disjuncts = []
        for j in range(num_outputs):
            if j != label:
                row = np.zeros(num_outputs)
                row[label], row[j] = 1.0, -1.0
                disjuncts.append(Conjunction(row[None, :], np.zeros(1)))
        return Property([InputRegion(box, disjuncts)], box.lo.size, num_outputs, "robustness", label)

    @staticmethod
    def from_vnnlib(path) -> "Property":
        from verifier.spec.vnnlib import read_vnnlib

        return read_vnnlib(path)

    def min_slack(self, y: np.ndarray, region: int = 0) -> float:
        """min over the region's disjuncts of the slack at one output vector y."""
        return float(min(c.slack(y)[0] for c in self.regions[region].disjuncts))
