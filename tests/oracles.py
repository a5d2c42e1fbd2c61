"""Independent oracles: exact minimum margins of tiny ReLU MLPs by enumerating activation
patterns (one LP per pattern, scipy's linprog), and closed forms for linear classifiers."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import linprog


def enumerate_min_margin(ws, bs, lo, hi, label) -> float:
    """min over the box of logit[label] - max_j logit[j], over every activation pattern."""
    n_hidden = [w.shape[0] for w in ws[:-1]]
    best = np.inf
    for pattern in itertools.product([0, 1], repeat=sum(n_hidden)):
        # Affine map of x for each layer under this pattern; constraints keep the pattern valid.
        A_ub, b_ub = [], []
        M, c = np.eye(lo.size), np.zeros(lo.size)  # current layer value = M x + c
        pos = 0
        for w, b, n in zip(ws[:-1], bs[:-1], n_hidden):
            zM, zc = w @ M, w @ c + b
            act = np.array(pattern[pos:pos + n], dtype=float)
            pos += n
            # active: z >= 0  ->  -zM x <= zc ; inactive: z <= 0 -> zM x <= -zc
            sign = np.where(act == 1, -1.0, 1.0)
            A_ub.append(sign[:, None] * zM)
            b_ub.append(np.where(act == 1, zc, -zc))
            M, c = act[:, None] * zM, act * zc
        oM, oc = ws[-1] @ M, ws[-1] @ c + bs[-1]
        for j in range(oM.shape[0]):
            if j == label:
                continue
            obj = oM[label] - oM[j]
            res = linprog(obj, A_ub=np.vstack(A_ub), b_ub=np.concatenate(b_ub),
                          bounds=list(zip(lo, hi)), method="highs")
            if res.status == 0:
                best = min(best, res.fun + oc[label] - oc[j])
    return best


def linear_worst_margin(w: np.ndarray, b: np.ndarray, x: np.ndarray, eps: float, label: int) -> float:
    """Closed form over an unclipped L-inf ball: min_j (w_y-w_j).x + b_y-b_j - eps*|w_y-w_j|_1."""
    vals = [(w[label] - w[j]) @ x + b[label] - b[j] - eps * np.abs(w[label] - w[j]).sum()
            for j in range(w.shape[0]) if j != label]
    return float(min(vals))
