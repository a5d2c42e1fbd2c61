"""Network + input box + bounds -> MILP (or its LP relaxation) in matrix form."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solvers.base import MilpProblem
from verifier.encode.builder import Handle, MilpBuilder
from verifier.network.graph import Network


@dataclass
class EncodedNetwork:
    problem: MilpProblem
    handles: dict[str, Handle]  # where each node's neurons live
    relu_binaries: list  # (z cols, y cols, a cols) per ReLU block
    input_node: str

    @property
    def num_binaries(self) -> int:
        return int(sum(a.size for _, _, a in self.relu_binaries))

    def linear_objective(self, node: str, weights: np.ndarray) -> tuple[np.ndarray, float]:
        """Cost vector and constant offset of weights @ value(node)."""
        h = self.handles[node]
        c = np.zeros(self.problem.num_cols)
        is_var = h.cols >= 0
        np.add.at(c, h.cols[is_var], weights[is_var])
        return c, float(weights[~is_var] @ h.const[~is_var])

    def assignment(self, net: Network, x: np.ndarray) -> np.ndarray:
        """Values of all MILP columns at input x (flat): a feasible point to seed a MIP."""
        values = net.forward_all(x.reshape(1, -1))
        sol = np.zeros(self.problem.num_cols)
        for node, h in self.handles.items():
            is_var = h.cols >= 0
            sol[h.cols[is_var]] = values[node][0][is_var]
        for z, _, a in self.relu_binaries:
            sol[a] = (sol[z] > 0).astype(float)
        return np.clip(sol, self.problem.col_lo, self.problem.col_hi)


def encode_network(net: Network, bounds: dict, nodes: list[str] | None = None) -> EncodedNetwork:
    """Encode `nodes` (default: all, in topological order) with the given per-node bounds; the
    input box is bounds[input]. Unstable ReLUs get binaries (relax them for an LP)."""
    builder = MilpBuilder()
    lo, hi = bounds[net.input_node]
    handles = {net.input_node: Handle(builder.add_cols(lo, hi), np.zeros(lo.size))}
    for node in nodes if nodes is not None else net.order:
        op = net.op(node)
        handles[node] = op.encode(builder, [handles[i] for i in op.inputs], bounds[node],
                                  [bounds[i] for i in op.inputs])
    return EncodedNetwork(builder.build(), handles, builder.relu_binaries, net.input_node)
