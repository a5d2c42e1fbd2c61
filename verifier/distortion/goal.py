"""What counts as an adversarial example: the decision goes to one of the target classes.

Untargeted (targets = every class but the label) or targeted (one class or a set; a target
that the input already has is reached at distance 0, by the input itself, as in MIPVerify). Ties count
as adversarial (DESIGN rule 4, as in MIPVerify): x is adversarial when some target j has
y_j >= y_k for every class k outside the targets. That is a disjunction over j of
conjunctions (y_k - y_j <= 0 for all k not in targets), the same data the verifier's
properties use, so the eps-ball verifier can decide it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verifier.errors import InputError
from verifier.spec.property import Conjunction


@dataclass
class Goal:
    label: int
    targets: tuple[int, ...]
    disjuncts: list[Conjunction]

    def slack(self, y: np.ndarray) -> float:
        """<= 0 exactly when the outputs y reach the goal (the least slack over targets)."""
        return float(min(c.slack(y)[0] for c in self.disjuncts))


def make_goal(num_outputs: int, label: int, targets=None) -> Goal:
    """The adversarial goal for `label`: any other class (targets None), or the given ones."""
    if targets is None:
        chosen = [j for j in range(num_outputs) if j != label]
    else:
        raw = [targets] if isinstance(targets, (int, np.integer)) else list(targets)
        for t in raw:
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
                raise InputError(f"target {t!r} is not a class index")
            if not 0 <= int(t) < num_outputs:
                raise InputError(f"target {t} is out of range: the model has {num_outputs} outputs")
        chosen = sorted({int(t) for t in raw})
        if not chosen:
            raise InputError("targets is empty: give at least one class")
    others = [k for k in range(num_outputs) if k not in chosen]
    disjuncts = []
    for j in chosen:
        C = np.zeros((len(others), num_outputs))
        C[np.arange(len(others)), others] = 1.0
        C[:, j] -= 1.0
        disjuncts.append(Conjunction(C, np.zeros(len(others))))
    return Goal(label, tuple(chosen), disjuncts)
