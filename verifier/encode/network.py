"""Network + input box + bounds -> MILP (or its LP relaxation) in matrix form.

Columns are the inputs and, per unstable ReLU, its output y and binary a; every other neuron is
an affine expression of those columns (see `Handle`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from solvers.base import MilpProblem
from verifier.deadline import check
from verifier.encode.builder import Handle, MilpBuilder
from verifier.network.graph import Network


@dataclass
class EncodedNetwork:
    problem: MilpProblem
    handles: dict[str, Handle]
    relu_binaries: list  # (relu node, neuron indices, y cols, a cols)
    input_node: str
    max_binaries: list = field(default_factory=list)  # see MilpBuilder.max_binaries

    @property
    def num_binaries(self) -> int:
        return int(sum(a.size for *_, a in self.relu_binaries) + sum(a.size for *_, a in self.max_binaries))

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

    def minimising_max(self, node: str, C: np.ndarray, d: np.ndarray, box: tuple) -> MilpProblem:
        """`with_max_objective` with the objective set to t, and t's range from the node's box
        (lo, hi) widened by a unit each way: a column bound sitting at the optimum once made
        HiGHS call a feasible LP infeasible (bab/leaf.py)."""
        lo, hi = box
        centre, radius = (lo + hi) / 2, (hi - lo) / 2
        t_lo = float((C @ centre - np.abs(C) @ radius - d).max()) - 1.0
        t_hi = float((C @ centre + np.abs(C) @ radius - d).max()) + 1.0
        problem = self.with_max_objective(node, C, d, t_lo, t_hi)
        problem.c[-1] = 1.0
        return problem

    def with_disjunction(self, node: str, conjunctions: list, row_bounds: list) -> MilpProblem:
        """The problem plus binaries z_d (one per conjunction, sum z = 1) and a last column t with
        t >= C_dk @ value(node) - d_dk - M_dk (1 - z_d): minimising t gives min_d max_k (...).

        row_bounds[d] = (lo, hi) of C_d @ value(node) - d_d over the input set; M_dk relaxes a
        row whose conjunction is not chosen down to the smallest value t can take.
        """
        p = self.problem
        h = self.handles[node]
        t_lo = min(lo.max() for lo, _ in row_bounds)
        t_hi = max(hi.max() for _, hi in row_bounds)
        blocks, rhs, z_entries = [], [], []
        row = 0
        n = len(conjunctions)
        for d, (conj, (lo, hi)) in enumerate(zip(conjunctions, row_bounds)):
            big_m = np.maximum(hi - t_lo, 0.0)
            blocks.append(sp.csr_matrix(conj.C) @ h.widened(p.num_cols))
            rhs.append(conj.d - conj.C @ h.const + big_m)
            z_entries += [(row + k, d, big_m[k]) for k in range(conj.d.size)]
            row += conj.d.size
        expr = sp.vstack(blocks)
        zr, zc, zv = (np.array(v) for v in zip(*z_entries))
        z_block = sp.csr_matrix((zv, (zr, zc)), shape=(row, n))
        A = sp.bmat([[p.A, None, None],
                     [expr, z_block, -np.ones((row, 1))],
                     [None, np.ones((1, n)), None]], format="csc")
        return MilpProblem(
            c=np.zeros(p.num_cols + n + 1), A=A,
            row_lo=np.concatenate([p.row_lo, np.full(row, -np.inf), [1.0]]),
            row_hi=np.concatenate([p.row_hi, np.concatenate(rhs), [1.0]]),
            col_lo=np.concatenate([p.col_lo, np.zeros(n), [t_lo]]),
            col_hi=np.concatenate([p.col_hi, np.ones(n), [t_hi]]),
            integer=np.concatenate([p.integer, np.ones(n, bool), [False]]))

    def convex_binaries(self, net: Network, rows) -> np.ndarray:
        """Binaries that may be relaxed to [0, 1] without changing a minimum: those of ReLUs
        that feed only the output, where every row of `rows` (the minimised cost vector, or the
        rows t >= row @ cols of a max objective; columns beyond the network's, such as t, are
        allowed) gives the ReLU's output a coefficient >= 0. A bool mask as wide as `rows`.

        Why exact: with its binary relaxed the ReLU's output y may sit anywhere in the triangle
        above max(0, z); lowering y to max(0, z) keeps every constraint (y enters nothing else)
        and cannot raise the objective. So the relaxed problem has the same minimum, its dual
        bound is a bound of the exact problem, and an incumbent's true objective is at most its
        relaxed one. On one-hidden-layer networks this removes a large share of the binaries."""
        from verifier.ops.affine import Affine

        rows = sp.csr_matrix(rows if sp.issparse(rows) else np.atleast_2d(rows))
        mask = np.zeros(rows.shape[1], dtype=bool)
        output = net.output_node
        if not isinstance(net.op(output), Affine) or any(net.graph.successors(output)):
            return mask  # e.g. a ReLU output: the last layer's y enter its rows
        for relu, _, y, a in self.relu_binaries:
            if set(net.graph.successors(relu)) != {output}:
                continue
            coef = rows[:, y].toarray()
            mask[a[(coef >= 0).all(axis=0)]] = True
        return mask

    def assignment(self, net: Network, x: np.ndarray) -> np.ndarray:
        """Values of all MILP columns at input x (flat): a feasible point to seed a MIP."""
        values = net.forward_all(x.reshape(1, -1))
        sol = np.zeros(self.problem.num_cols)
        sol[self.input_cols] = x
        for relu, idx, y, a in self.relu_binaries:
            sol[y] = values[relu][0][idx]
            sol[a] = (values[net.op(relu).inputs[0]][0][idx] > 0).astype(float)
        for node, groups, y, owner, cand, a in self.max_binaries:
            sol[y] = values[node][0][groups]
            source = values[net.op(node).inputs[0]][0]
            # The first live candidate reaching its group's max takes the binary.
            hit = np.flatnonzero(source[cand] >= sol[y][owner])
            first = hit[np.unique(owner[hit], return_index=True)[1]]
            sol[a] = 0.0
            sol[a[first]] = 1.0
        return np.clip(sol, self.problem.col_lo, self.problem.col_hi)


def encode_network(net: Network, bounds: dict, nodes: list[str] | None = None,
                   deadline: float = math.inf) -> EncodedNetwork:
    """Encode `nodes` (default: all, in topological order) with the given per-node bounds; the
    input box is bounds[input]. Unstable ReLUs get binaries (relax them for an LP). Raises
    deadline.OutOfTime once `deadline` passes between two ops: substituted expressions fill in
    on residual CNNs, to millions of nonzeros and seconds to encode (benchmarks/RESULTS.md, "Why
    the defaults are what they are")."""
    builder = MilpBuilder()
    lo, hi = bounds[net.input_node]
    cols = builder.add_cols(lo, hi)
    handles = {net.input_node: Handle(sp.identity(lo.size, format="csr"), np.zeros(lo.size))}
    assert cols[0] == 0
    for node in nodes if nodes is not None else net.order:
        check(deadline)
        op = net.op(node)
        handles[node] = op.encode(builder, [handles[i] for i in op.inputs], bounds[node],
                                  [bounds[i] for i in op.inputs], node=node)
    return EncodedNetwork(builder.build(), handles, builder.relu_binaries, net.input_node, builder.max_binaries)
