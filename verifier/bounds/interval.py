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


def output_rows_lower(net: Network, bounds: Bounds, rows: np.ndarray) -> np.ndarray:
    """Interval lower bounds on rows @ output (one per row).

    When the output is an Affine of one node, the combined rows rows @ W are bounded directly,
    which is much tighter than combining the output intervals (label margins: W_y - W_j).
    """
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    op = net.op(net.output_node)
    if isinstance(op, Affine) and len(op.inputs) == 1:
        w = op.weights[0].matrix
        combined = Affine(list(op.inputs), [np.asarray(sp.csr_matrix(w).T @ rows.T).T], rows @ op.bias)
        return combined.interval([bounds[op.inputs[0]]])[0]
    lo, hi = bounds[net.output_node]
    return Affine([net.output_node], [rows], np.zeros(rows.shape[0])).interval([(lo, hi)])[0]
