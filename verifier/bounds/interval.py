"""Interval arithmetic over the DAG, and interval bounds on label margins."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from verifier.network.graph import Network
from verifier.ops.affine import Affine

Bounds = dict[str, tuple[np.ndarray, np.ndarray]]


def interval_bounds(net: Network, lo: np.ndarray, hi: np.ndarray, known: Bounds | None = None) -> Bounds:
    """Bounds on every node over the input box [lo, hi]; `known` bounds (e.g. from LPs) are
    intersected in as they are met, so later layers profit from them."""
    bounds: Bounds = {net.input_node: (np.asarray(lo, float), np.asarray(hi, float))}
    for node in net.order:
        op = net.op(node)
        b_lo, b_hi = op.interval([bounds[i] for i in op.inputs])
        if known is not None and node in known:
            k_lo, k_hi = known[node]
            b_lo, b_hi = np.maximum(b_lo, k_lo), np.minimum(b_hi, k_hi)
        bounds[node] = (b_lo, b_hi)
    return bounds


def margin_interval(net: Network, bounds: Bounds, label: int) -> np.ndarray:
    """Lower bounds on logit[label] - logit[j] for every j (entry `label` is +inf).

    When the output is an Affine of one node, the difference of rows is bounded directly,
    which is much tighter than lo[label] - hi[j].
    """
    op = net.op(net.output_node)
    n = net.output_size
    if isinstance(op, Affine) and len(op.inputs) == 1:
        w = op.weights[0]
        w = w.toarray() if sp.issparse(w) else w  # n rows only: dense is fine
        rows = w[[label]] - w
        diff = Affine(list(op.inputs), [rows], op.bias[label] - op.bias)
        lower = diff.interval([bounds[op.inputs[0]]])[0]
    else:
        lo, hi = bounds[net.output_node]
        lower = lo[label] - hi
    lower = np.asarray(lower, dtype=np.float64).copy()
    lower[label] = np.inf
    assert lower.size == n
    return lower

