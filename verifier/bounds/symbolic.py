"""Symbolic (CROWN / DeepPoly-style) linear bound propagation, backward through the DAG.

A lower bound on L @ value(node) + b is found by substituting each op's linear relaxation from
the node back to the input box (`op.backward_lower`), then minimising over the box. Rows of L
stay scipy-sparse while the weights are sparse (convolutions), so the cost follows the receptive
fields, not the layer widths. Used for intermediate ReLU bounds and for label margins; both are
intersected with interval bounds, so the result is never looser than intervals.

Every run's first CROWN bounds on a CPU come from here (search/plan.first_walk: its sparse rows
beat the bound engine's dense walk on convolutions); on a GPU, and for every later bound, the
engine's walk gives them. It also serves the minimum-distortion search (distortion/direct.py),
and the tests compare the two walks.
"""

from __future__ import annotations

import math
import time

import networkx as nx
import numpy as np
import scipy.sparse as sp

from verifier.bounds.interval import Bounds, interval_bounds
from verifier.deadline import Pace
from verifier.network.graph import Network

#: Relative and absolute slack covering float rounding in the products (bounds stay outward).
_REL_SLACK = 1e-9
_ABS_SLACK = 1e-9
#: Neurons per back-substitution when a deadline is to be kept (two rows each: lower, upper).
CHUNK = 256


def _abs(m):
    return abs(m) if sp.issparse(m) else np.abs(m)


def _add(a, b):
    """Sum of two coefficient blocks (a node feeding several ops, as in residual graphs); a
    sparse block plus a dense one is a plain array, never a numpy.matrix."""
    if sp.issparse(a) and sp.issparse(b):
        return sp.csr_matrix(a + b)
    return np.asarray(a + b)


def backward_lower(net: Network, bounds: Bounds, node: str, coeffs, offset: np.ndarray) -> np.ndarray:
    """Lower bounds on coeffs @ value(node) + offset over the input box (one per row)."""
    pending = {node: coeffs}
    const = np.asarray(offset, dtype=np.float64).copy()
    magnitude = np.abs(const)
    ancestors = nx.ancestors(net.graph, node) | {node}
    for current in reversed(net.order):
        if current not in pending or current not in ancestors:
            continue
        lam = pending.pop(current)
        op = net.op(current)
        parts, add = op.backward_lower(lam, [bounds[i] for i in op.inputs])
        const += add
        magnitude += np.abs(add)
        for src, part in zip(op.inputs, parts):
            pending[src] = _add(pending[src], part) if src in pending else part
    lam = pending.get(net.input_node)
    if lam is None:  # the node does not depend on the input
        return const
    lo, hi = bounds[net.input_node]
    centre, radius = (lo + hi) / 2.0, (hi - lo) / 2.0
    value = np.asarray(lam @ centre).ravel() - np.asarray(_abs(lam) @ radius).ravel()
    magnitude += np.asarray(_abs(lam) @ (np.abs(centre) + radius)).ravel()
    return const + value - _REL_SLACK * magnitude - _ABS_SLACK


def _unstable(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.flatnonzero((lo < 0) & (hi > 0))


def symbolic_bounds(net: Network, bounds: Bounds, deadline: float = math.inf) -> Bounds:
    """Tighten the pre-activation bounds of every ReLU by back-substitution, layer by layer,
    until `deadline`: a layer's neurons go in chunks of CHUNK (each row's bound is independent
    of the others, so chunking changes no bound), and a chunk starts only if the slowest so
    far would end in time; neurons not reached keep their interval bounds. On a residual CNN
    all layers take longer than a short timeout (benchmarks/RESULTS.md, "Why the defaults are
    what they are")."""
    lo, hi = bounds[net.input_node]
    known: Bounds = {}
    pace = Pace(deadline)
    for relu in net.relu_nodes():
        pre = net.op(relu).inputs[0]
        p_lo, p_hi = bounds[pre]
        idx = _unstable(p_lo, p_hi)
        new_lo, new_hi = p_lo.copy(), p_hi.copy()
        for part in np.array_split(idx, -(-idx.size // CHUNK)) if idx.size else []:
            if not pace.next():
                break
            k = part.size
            rows = sp.csr_matrix((np.r_[np.ones(k), -np.ones(k)], (np.arange(2 * k), np.r_[part, part])),
                                 shape=(2 * k, p_lo.size))
            lower = backward_lower(net, bounds, pre, rows, np.zeros(2 * k))
            new_lo[part] = np.maximum(p_lo[part], lower[:k])
            new_hi[part] = np.minimum(p_hi[part], -lower[k:])
        if idx.size:
            known[pre] = (new_lo, new_hi)
            bounds = interval_bounds(net, lo, hi, {**known})
        if time.perf_counter() > deadline:
            break
    return bounds
