"""Independent oracles: exact optima over tiny ReLU MLPs by enumerating activation patterns
(one LP per pattern, scipy's linprog), and closed forms for linear classifiers."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import linprog


def _patterns(ws, bs):
    """For every activation pattern: (A_ub, b_ub) keeping x in the pattern, the output as
    oM @ x + oc under it, and each hidden layer's pre-activation as (zM, zc): zM @ x + zc."""
    n_hidden = [w.shape[0] for w in ws[:-1]]
    for pattern in itertools.product([0, 1], repeat=sum(n_hidden)):
        A_ub, b_ub, pre = [], [], []
        M, c = np.eye(ws[0].shape[1]), np.zeros(ws[0].shape[1])  # current layer = M x + c
        pos = 0
        for w, b, n in zip(ws[:-1], bs[:-1], n_hidden):
            zM, zc = w @ M, w @ c + b
            pre.append((zM, zc))
            act = np.array(pattern[pos:pos + n], dtype=float)
            pos += n
            # active: z >= 0  ->  -zM x <= zc ; inactive: z <= 0 -> zM x <= -zc
            sign = np.where(act == 1, -1.0, 1.0)
            A_ub.append(sign[:, None] * zM)
            b_ub.append(np.where(act == 1, zc, -zc))
            M, c = act[:, None] * zM, act * zc
        yield np.vstack(A_ub), np.concatenate(b_ub), ws[-1] @ M, ws[-1] @ c + bs[-1], pre


def enumerate_min_slack(ws, bs, lo, hi, conjunctions) -> float:
    """min over the box and over conjunctions (C, d) of max_k (C_k y - d_k)."""
    n = lo.size
    best = np.inf
    for A_ub, b_ub, oM, oc, _ in _patterns(ws, bs):
        for C, d in conjunctions:
            # variables (x, t): minimise t  s.t.  C (oM x + oc) - d <= t
            A = np.vstack([np.hstack([A_ub, np.zeros((A_ub.shape[0], 1))]),
                           np.hstack([C @ oM, -np.ones((C.shape[0], 1))])])
            b = np.concatenate([b_ub, d - C @ oc])
            res = linprog(np.r_[np.zeros(n), 1.0], A_ub=A, b_ub=b,
                          bounds=list(zip(lo, hi)) + [(None, None)], method="highs")
            if res.status == 0:
                best = min(best, res.fun)
    return best


def enumerate_min_margin(ws, bs, lo, hi, label) -> float:
    """min over the box of logit[label] - max_j logit[j]."""
    n_out = ws[-1].shape[0]
    conjunctions = []
    for j in range(n_out):
        if j != label:
            row = np.zeros(n_out)
            row[label], row[j] = 1.0, -1.0
            conjunctions.append((row[None, :], np.zeros(1)))
    return enumerate_min_slack(ws, bs, lo, hi, conjunctions)


def linear_worst_margin(w: np.ndarray, b: np.ndarray, x: np.ndarray, eps: float, label: int) -> float:
    """Closed form over an unclipped L-inf ball: min_j (w_y-w_j).x + b_y-b_j - eps*|w_y-w_j|_1."""
    vals = [(w[label] - w[j]) @ x + b[label] - b[j] - eps * np.abs(w[label] - w[j]).sum()
            for j in range(w.shape[0]) if j != label]
    return float(min(vals))


def enumerate_min_distortion(ws, bs, x0, lo, hi, conjunctions, norm: str) -> float:
    """Minimum distortion of x0 within [lo, hi] reaching one of the conjunctions (C, d):
    min over activation patterns and conjunctions of one convex problem each (linf/l1: an LP;
    l2: a least-distance QP by scipy's SLSQP; l0: the smallest set of free coordinates whose
    LP is feasible). inf if none is feasible."""
    from scipy.optimize import minimize

    n = x0.size
    eye = np.eye(n)
    best = np.inf
    for A_ub, b_ub, oM, oc, _ in _patterns(ws, bs):
        for C, d in conjunctions:
            A = np.vstack([A_ub, C @ oM])
            b = np.concatenate([b_ub, d - C @ oc])
            box = list(zip(lo, hi))
            feasible = linprog(np.zeros(n), A_ub=A, b_ub=b, bounds=box, method="highs")
            if feasible.status != 0:
                continue
            if norm in ("linf", "l1"):
                k = 1 if norm == "linf" else n
                T = np.ones((n, 1)) if norm == "linf" else eye
                # x - x0 <= t (or u), x0 - x <= t (or u)
                A2 = np.vstack([np.hstack([A, np.zeros((A.shape[0], k))]),
                                np.hstack([eye, -T]), np.hstack([-eye, -T])])
                b2 = np.concatenate([b, x0, -x0])
                res = linprog(np.r_[np.zeros(n), np.ones(k)], A_ub=A2, b_ub=b2,
                              bounds=box + [(0, None)] * k, method="highs")
                if res.status == 0:
                    best = min(best, res.fun)
            elif norm == "l2":
                res = minimize(lambda x: ((x - x0) ** 2).sum(), feasible.x, jac=lambda x: 2 * (x - x0),
                               constraints=[{"type": "ineq", "fun": lambda x: b - A @ x, "jac": lambda x: -A}],
                               bounds=box, method="SLSQP", options={"ftol": 1e-15, "maxiter": 500})
                if res.success and np.all(A @ res.x <= b + 1e-9):
                    best = min(best, float(np.sqrt(res.fun)))
            else:  # l0
                for size in range(n + 1):
                    if size >= best:
                        break
                    for free in itertools.combinations(range(n), size):
                        fixed = [(lo[i], hi[i]) if i in free else (x0[i], x0[i]) for i in range(n)]
                        if linprog(np.zeros(n), A_ub=A, b_ub=b, bounds=fixed, method="highs").status == 0:
                            best = min(best, size)
                            break
    return best


def enumerate_constrained_ranges(ws, bs, lo, hi, C, d) -> dict[tuple[int, int], tuple[float, float]]:
    """(min, max) of every hidden pre-activation z_k[j] over U = {x in the box: C y(x) - d <= 0
    row-wise}, by enumerating activation patterns (one LP per pattern and objective); empty if
    U is empty."""
    n = lo.size
    ranges: dict[tuple[int, int], tuple[float, float]] = {}
    for A_ub, b_ub, oM, oc, pre in _patterns(ws, bs):
        A = np.vstack([A_ub, C @ oM])
        b = np.concatenate([b_ub, d - C @ oc])
        box = list(zip(lo, hi))
        if linprog(np.zeros(n), A_ub=A, b_ub=b, bounds=box, method="highs").status != 0:
            continue
        for k, (zM, zc) in enumerate(pre):
            for j in range(zM.shape[0]):
                low = linprog(zM[j], A_ub=A, b_ub=b, bounds=box, method="highs").fun + zc[j]
                high = -linprog(-zM[j], A_ub=A, b_ub=b, bounds=box, method="highs").fun + zc[j]
                old = ranges.get((k, j), (np.inf, -np.inf))
                ranges[(k, j)] = (min(old[0], low), max(old[1], high))
    return ranges


def assert_verdict_agrees(result, expected: float) -> None:
    """A verification result against the exact least slack `expected` (enumeration): decided
    the right way wherever the slack is clear of 0 by 1e-4, never robust unless it is > 0, and
    its proven margin never above it."""
    from verifier import Status

    if expected > 1e-4:
        assert result.status == Status.ROBUST
    elif expected < -1e-4:
        assert result.status == Status.ADVERSARIAL
    if result.status == Status.ROBUST:
        assert expected > 0
    assert result.margin_lower <= expected + 1e-9
