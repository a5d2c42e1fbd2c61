"""Ops the importer has no handler for, evaluated by ONNX's own reference implementation.

Two cases are exact without a handler of our own:
- every input is a constant (shape arithmetic such as ConstantOfShape, Range, Slice of shapes,
  which exporters emit without constant folding): the op is evaluated once;
- a pure data-movement op (Slice, Gather, Split, Tile, ...) of one input-dependent tensor:
  running it on the tensor's entry numbers tells which input entry each output copies, which
  is a sparse 0/1 matrix (an `Affine` map).
"""

from __future__ import annotations

import warnings

import numpy as np

from verifier.importers import linear_maps as lm
from verifier.errors import first_line
from verifier.importers.tracing import Sym, Tracer

#: Ops that only copy entries of their first input (the other inputs are constants).
MOVEMENT_OPS = frozenset({"Slice", "Gather", "GatherElements", "GatherND", "Split", "Tile", "Expand",
                          "DepthToSpace", "SpaceToDepth", "ReverseSequence"})


def evaluate(t: Tracer, args: list) -> list[np.ndarray]:
    """Outputs of the tracer's current node on these inputs (constants, or entry numbers)."""
    from onnx.reference import ReferenceEvaluator

    node = t.onnx_node
    # Float tensors are float64 throughout the importer, so the op sees one float type (and
    # double-typed models keep their values).
    feeds = {name: np.asarray(v) for name, v in zip(node.input, args) if name}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outputs = ReferenceEvaluator(node).run(None, feeds)
    except Exception as e:  # the reference raises many types; one line for the user
        raise t.fail(f"cannot evaluate this op: {first_line(e)}") from None
    return [np.asarray(o, dtype=np.float64) if np.asarray(o).dtype.kind == "f" else np.asarray(o) for o in outputs]


def move_entries(t: Tracer, args: list) -> list[Sym]:
    """Outputs of a data-movement node on one input-dependent tensor, as 0/1 Affine maps."""
    x = args[0]
    if any(isinstance(a, Sym) for a in args[1:]):
        raise t.fail("only the data input may depend on the network input")
    numbers = np.arange(1, x.size + 1, dtype=np.float64).reshape(x.shape)  # float32-exact below 2**24
    if x.size >= 2 ** 24:
        raise t.fail(f"tensor of {x.size} entries is too large to trace")
    outs = []
    for moved in evaluate(t, [numbers] + list(args[1:])):
        source = np.rint(moved).astype(np.int64) - 1
        if not np.array_equal(source + 1, moved) or source.min(initial=0) < 0 or source.max(initial=0) >= x.size:
            raise t.fail("the op does not only copy entries of its input")
        outs.append(t.affine(x, lm.index_map(source.ravel(), x.size), None, moved.shape))
    return outs
