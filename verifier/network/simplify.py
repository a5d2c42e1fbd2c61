"""Graph simplification: fold consecutive affine ops into one.

Normalisation layers, BatchNorm, permutations and Gemm chains without a ReLU between them are
one affine map; folding them shrinks the MILP and tightens interval bounds (interval arithmetic
through two maps is looser than through their product). The maps compose by
`verifier.ops.linear.compose`: scales fold into convolutions, which stay convolutions; a fold
that would densify a sparse map (conv followed by conv) is skipped.
"""

from __future__ import annotations

import networkx as nx

from verifier.ops.affine import Affine
from verifier.ops.linear import compose


def _compose(outer: Affine, inner: Affine) -> Affine | None:
    """outer(inner(x)) as one Affine, or None if its map is not worth folding (see compose)."""
    w_out = outer.weights[0]
    product = compose(w_out, inner.weights[0])
    if product is None:
        return None
    bias = outer.bias + w_out.apply(inner.bias[None])[0]
    return Affine(list(inner.inputs), [product], bias, inner.origin + outer.origin)


def fold_affine_chains(graph: nx.DiGraph, input_node: str, output_node: str) -> nx.DiGraph:
    """Merge every single-input Affine into its single-input Affine consumer when it has no
    other consumer. Returns a new graph; node names of the consumers are kept."""
    graph = graph.copy()
    changed = True
    while changed:
        changed = False
        for node in list(nx.topological_sort(graph)):
            if node == input_node or node not in graph:
                continue
            op = graph.nodes[node].get("op")
            if not isinstance(op, Affine) or len(op.inputs) != 1:
                continue
            src = op.inputs[0]
            src_op = graph.nodes[src].get("op")
            if (src == input_node or src == output_node or not isinstance(src_op, Affine)
                    or len(src_op.inputs) != 1 or graph.out_degree(src) != 1):
                continue
            merged = _compose(op, src_op)
            if merged is None:
                continue
            graph.remove_node(src)
            graph.nodes[node]["op"] = merged
            graph.add_edge(merged.inputs[0], node)
            changed = True
    return graph
