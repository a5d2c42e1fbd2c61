"""Network + input box + bounds -> MILP (or its LP relaxation) in matrix form.

Columns are the inputs and, per unstable ReLU, its output y and binary a; every other neuron is
an affine expression of those columns (see `Handle`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from solvers.base import MilpProblem
from verifier.encode.builder import Handle, MilpBuilder
from verifier.network.graph import Network


@dataclass
class EncodedNetwork:
    problem: MilpProblem
    handles: dict[str, Handle]
    relu_binaries: list  # (relu node, neuron indices, y cols, a cols)
    input_node: str

    @property
    def num_binaries(self) -> int:
        return int(sum(a.size for *_, a in self.relu_binaries))

    @property
    def input_cols(self) -> np.ndarray:
        return self.handles[self.input_node].expr.indices

    def linear_objective(self, node: str, weights: np.ndarray) -> tuple[np.ndarray, float]:
        """Cost vector and constant offset of weights @ value(node)."""
        h = self.handles[node]
        c = np.asarray(h.widened(self.problem.num_cols).T @ weights).ravel()
        return c, float(weights @ h.const)

    def with_max_objective(self, node: str, C: np.ndarray, d: np.ndarray, t_lo: float,
                           t_hi: float) -> MilpProblem:
        """The problem plus a last column t with t >= C_k @ value(node) - d_k for every row k
        (t's bounds [t_lo, t_hi] must hold for the true max): minimising t minimises the max."""
        p = self.problem
        h = self.handles[node]
        expr = sp.csr_matrix(C) @ h.widened(p.num_cols)  # C_k @ value = expr_k @ x + C_k @ const
        k = C.shape[0]
        A = sp.bmat([[p.A, None], [expr, -np.ones((k, 1))]], format="csc")
        return MilpProblem(
            c=np.zeros(p.num_cols + 1), A=A,
            row_lo=np.concatenate([p.row_lo, np.full(k, -np.inf)]),
            row_hi=np.concatenate([p.row_hi, d - C @ h.const]),
            col_lo=np.append(p.col_lo, t_lo), col_hi=np.append(p.col_hi, t_hi),
            integer=np.append(p.integer, False))

    def assignment(self, net: Network, x: np.ndarray) -> np.ndarray:
        """Values of all MILP columns at input x (flat): a feasible point to seed a MIP."""
        values = net.forward_all(x.reshape(1, -1))
        sol = np.zeros(self.problem.num_cols)
        sol[self.input_cols] = x
        for relu, idx, y, a in self.relu_binaries:
            sol[y] = values[relu][0][idx]
            sol[a] = (values[net.op(relu).inputs[0]][0][idx] > 0).astype(float)
        return np.clip(sol, self.problem.col_lo, self.problem.col_hi)


def encode_network(net: Network, bounds: dict, nodes: list[str] | None = None) -> EncodedNetwork:
    """Encode `nodes` (default: all, in topological order) with the given per-node bounds; the
    input box is bounds[input]. Unstable ReLUs get binaries (relax them for an LP)."""
    builder = MilpBuilder()
    lo, hi = bounds[net.input_node]
    cols = builder.add_cols(lo, hi)
    handles = {net.input_node: Handle(sp.identity(lo.size, format="csr"), np.zeros(lo.size))}
    assert cols[0] == 0
    for node in nodes if nodes is not None else net.order:
        op = net.op(node)
        handles[node] = op.encode(builder, [handles[i] for i in op.inputs], bounds[node],
                                  [bounds[i] for i in op.inputs], node=node)
    return EncodedNetwork(builder.build(), handles, builder.relu_binaries, net.input_node)
