"""A dense chain view of a Network: the fast path for MLPs, as dense float64 torch tensors.

For z_k = W_k h_{k-1} + b_k, h_k = relu(z_k), output = z_L with plain matrices (every MLP)
branch and bound runs on this copy (chain_problem.py): it can drop the neurons that are dead
over the whole box from every matrix, and its refinement and output-constraint stages are
written for it. Every other network (convolutions, residual adds, pooling, a ReLU feeding a
ReLU) gets None and runs on the bound engine over the graph (verifier/bounds/graph.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch

from verifier.network.graph import Network
from verifier.ops.affine import Affine
from verifier.ops.linear import MatrixMap
from verifier.ops.linear import LinearMap
from verifier.ops.relu import Relu

#: Dense copies of sparse weights above this many entries are refused (memory).
MAX_DENSE_ENTRIES = 40_000_000


@dataclass
class Layered:
    weights: list[torch.Tensor]  # W_k, (n_k, n_{k-1}), k = 1..L
    biases: list[torch.Tensor]  # b_k, (n_k,)
    pre_nodes: list[str]  # network node of z_k for k = 1..L-1 (each feeds one ReLU)

    def to(self, dtype: torch.dtype) -> "Layered":
        """The same chain in another precision (float32 for optimisation steps, cached)."""
        if self.weights[0].dtype == dtype:
            return self
        cache = self.__dict__.setdefault("_casts", {})
        if dtype not in cache:
            cache[dtype] = Layered([w.to(dtype) for w in self.weights], [b.to(dtype) for b in self.biases],
                                   self.pre_nodes)
        return cache[dtype]

    @cached_property
    def abs_weights(self) -> list[torch.Tensor]:
        """|W_k|, for the rounding slack of bounds."""
        return [w.abs() for w in self.weights]

    @property
    def depth(self) -> int:
        """Number of ReLU layers."""
        return len(self.pre_nodes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs for a batch of flat inputs (B, n_0)."""
        h = x
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w.T + b
            if k < self.depth:
                h = torch.relu(h)
        return h

    def last_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last ReLU layer for a batch of flat inputs (B, n_0)."""
        h = x
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = torch.relu(h @ w.T + b)
        return h

    def without(self, keep: list[torch.Tensor]) -> "Layered":
        """The chain with only neurons `keep[k]` of each ReLU layer k. Exact for dropping neurons
        that are inactive over the whole input set (their output is 0, so their column of the
        next layer's weights never counts)."""
        weights, biases = [], []
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            if k > 0:
                w = w[:, keep[k - 1]]
            if k < self.depth:
                w, b = w[keep[k]], b[keep[k]]
            weights.append(w.contiguous())
            biases.append(b.contiguous())
        return Layered(weights, biases, self.pre_nodes)

    @property
    def splits(self) -> list[int]:
        """The ReLU layers a search may split (by number)."""
        return list(range(self.depth))

    def problem(self, specs, x_lo, x_hi, lower: list, upper: list):
        """The data of one branch and bound on this chain (chain_problem.py)."""
        from verifier.bab.chain_problem import ChainProblem

        return ChainProblem(self, specs, x_lo, x_hi, lower, upper)

    def spec_rows(self, rows: np.ndarray, offsets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """rows @ y - offsets as (weights on the last hidden layer, constants)."""
        c = torch.as_tensor(np.asarray(rows, dtype=np.float64))
        return c @ self.weights[-1], c @ self.biases[-1] - torch.as_tensor(np.asarray(offsets, dtype=np.float64))


def _dense(weight: LinearMap) -> torch.Tensor | None:
    """W as a dense float64 tensor, or None if too large (checked before any matrix is built)."""
    rows, cols = weight.shape
    if rows * cols > MAX_DENSE_ENTRIES:
        return None
    matrix = weight.matrix
    array = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


def as_layered(net: Network, deadline: float = math.inf) -> Layered | None:
    """The chain form of `net`, or None if it is not Affine -> ReLU -> ... -> Affine, or if
    `deadline` passes while its dense matrices are made (then nothing is cached, so a later
    call with more time may still build it)."""
    cached = net.cache.get("layered", False)
    if cached is not False:
        return cached
    affine = _chain_affines(net)
    layered = None
    if affine is not None:
        layered = _densify(net, affine, deadline)
        if layered is _OUT_OF_TIME:
            return None
    net.cache["layered"] = layered
    return layered


_OUT_OF_TIME = object()


def _chain_affines(net: Network) -> list[str] | None:
    """The affine nodes of `net` in order if it is a chain Affine -> ReLU -> ... -> Affine of
    plain matrices (checked before any matrix is made dense: a residual network fails at its
    first add, after its first layers would have been densified for nothing), else None. A
    convolution or another structured map is never made dense: such networks go to the bound
    engine over the graph, which keeps it as it is."""
    affine, relus = [], 0
    current = net.input_node
    for node in net.order:
        op = net.op(node)
        if op.inputs != [current]:
            return None
        if isinstance(op, Affine):
            if affine and len(affine) != relus:  # two affine ops in a row
                return None
            if not all(isinstance(w, MatrixMap) for w in op.weights):
                return None
            affine.append(node)
        elif isinstance(op, Relu):
            if len(affine) != relus + 1:  # ReLU not right after an affine op
                return None
            relus += 1
        else:
            return None
        current = node
    if current != net.output_node or len(affine) != relus + 1:
        return None
    return affine


def _densify(net: Network, affine: list[str], deadline: float):
    """The Layered chain of these affine nodes; None if a matrix is too large to make dense,
    _OUT_OF_TIME if the deadline passes first."""
    weights, biases = [], []
    for node in affine:
        if time.perf_counter() > deadline:
            return _OUT_OF_TIME
        op = net.op(node)
        w = _dense(op.weights[0])
        if w is None:
            return None
        weights.append(w)
        biases.append(torch.as_tensor(op.bias))
    pre_nodes = [net.op(node).inputs[0] for node in net.relu_nodes()]
    return Layered(weights, biases, pre_nodes)
