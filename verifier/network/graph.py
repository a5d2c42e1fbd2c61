"""The Network: a DAG (networkx) of typed ops over flat vectors, with a numpy forward pass.

Plain data: the graph, the input's shape and name, the output node, and the bytes of the
original ONNX file so that counterexamples can be re-checked by an independent runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx
import numpy as np

from verifier.errors import InputError


@dataclass
class Network:
    graph: nx.DiGraph  # node name -> attribute "op"; the input node has no op
    input_node: str
    input_shape: tuple[int, ...]  # without the batch dimension
    output_node: str
    onnx_bytes: bytes | None = None  # the original model, for independent re-checks
    onnx_input_shape: tuple[int, ...] = ()  # full ONNX input shape, batch included
    name: str = "network"
    info: dict = field(default_factory=dict)
    #: Objects derived from the network and kept with it (an onnxruntime session, the dense
    #: chain, compiled bound graphs); never pickled: a process that receives the network
    #: makes its own.
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["cache"] = {}
        return state

    @cached_property
    def order(self) -> list[str]:
        """Op nodes in topological order (the input node excluded)."""
        return [n for n in nx.topological_sort(self.graph) if n != self.input_node]

    def op(self, node: str):
        return self.graph.nodes[node]["op"]

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @cached_property
    def sizes(self) -> dict[str, int]:
        """Flat size of every node's value."""
        out = self.forward_all(np.zeros((1, self.input_size)))
        return {k: v.shape[1] for k, v in out.items()}

    @property
    def output_size(self) -> int:
        return self.sizes[self.output_node]

    def flatten_input(self, x: np.ndarray, source: str = "input") -> np.ndarray:
        """Accept one input shaped like the model input (or flat); return a flat float64 copy."""
        x = np.asarray(x, dtype=np.float64)
        check_layout(tuple(x.shape), self.input_shape, source)
        if not np.all(np.isfinite(x)):
            raise InputError("input contains NaN or infinite values")
        return x.reshape(-1).copy()

    def forward_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Values of every node for a batch of flat inputs x (B, n)."""
        values = {self.input_node: np.asarray(x, dtype=np.float64)}
        for node in self.order:
            op = self.op(node)
            values[node] = op.forward([values[i] for i in op.inputs])
        return values

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch (B, n) of flat inputs, or for a single input of any shape."""
        x = np.asarray(x, dtype=np.float64)
        single = x.ndim == 1 or tuple(x.shape) == tuple(self.input_shape)
        batch = x.reshape(1, -1) if single else x.reshape(x.shape[0], -1)
        out = self.forward_all(batch)[self.output_node]
        return out[0] if single else out

    def relu_nodes(self) -> list[str]:
        from verifier.ops.relu import Relu
        return [n for n in self.order if isinstance(self.op(n), Relu)]


def _cuts(shape: tuple[int, ...]) -> set[int]:
    """Where row-major order starts a new index of each axis: the products of leading sizes."""
    return {int(np.prod(shape[:k + 1])) for k in range(len(shape))} - {1}


def check_layout(shape: tuple[int, ...], input_shape: tuple[int, ...], source: str = "input") -> None:
    """One sample's `shape` must group the model's input axes the same way in row-major order:
    the input shape itself, flat, with axes of size 1 added or dropped ((28, 28) for
    (1, 28, 28)), or neighbouring axes merged or split ((3, 1024) for (3, 32, 32); a model that
    takes a vector reads any sample flattened). Any other shape of the right size (an image
    stored (32, 32, 3) for a model that takes (3, 32, 32)) would be read in the wrong layout
    without a word, so it is refused."""
    shape, input_shape = tuple(int(d) for d in shape), tuple(int(d) for d in input_shape)
    size, expected = int(np.prod(shape)), int(np.prod(input_shape))
    if size != expected:
        raise InputError(f"{source} has {size} values (shape {shape}) but the model expects {expected} "
                         f"(shape {input_shape})")
    mine, theirs = _cuts(shape), _cuts(input_shape)
    if mine <= theirs or theirs <= mine:
        return
    if sorted(d for d in shape if d != 1) == sorted(d for d in input_shape if d != 1):
        raise InputError(f"{source} has shape {shape}, a transpose of the model's input shape {input_shape}: "
                         f"reorder its axes (e.g. numpy.transpose) to {input_shape}, or pass it flat in that order")
    raise InputError(f"{source} has shape {shape} but the model's input shape is {input_shape}: pass it in "
                     f"that shape, or flat in that order")
