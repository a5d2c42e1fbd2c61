"""The Network compiled for the bound engine: its DAG as torch ops on one device and dtype.

Nodes are numbered in topological order, the input node 0; each holds its op's `BoundOp` (see
ops/contract.py) and the numbers of its inputs. Compiled once per (device, dtype) and kept with
the Network, so every stage and every search shares the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from verifier.network.graph import Network
from verifier.ops.contract import BoundOp

Box = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Node:
    name: str
    op: BoundOp | None  # None for the input node
    inputs: list[int]
    size: int


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A torch device from a user's word ("cpu", "cuda", "cuda:1"; None is "cpu"), refused with
    a clear message where torch cannot use it."""
    from verifier.errors import InputError

    try:
        resolved = torch.device(device or "cpu")
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device {device!r}: {e}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: torch sees no CUDA device here")
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: expected cpu or cuda")
    return resolved


class BoundGraph:
    """A Network's ops compiled onto `device` in `dtype` (use `compiled`, which caches)."""

    def __init__(self, net: Network, device: torch.device, dtype: torch.dtype) -> None:
        self.net, self.device, self.dtype = net, device, dtype
        names = [net.input_node] + list(net.order)
        self.index = {name: i for i, name in enumerate(names)}
        sizes = net.sizes
        self.nodes = [Node(net.input_node, None, [], net.input_size)]
        for name in net.order:
            op = net.op(name)
            inputs = [self.index[i] for i in op.inputs]
            compiled = op.compile(device, dtype, [self.nodes[i].size for i in inputs])
            self.nodes.append(Node(name, compiled, inputs, sizes[name]))
        self.output = self.index[net.output_node]
        #: nodes whose relaxation depends on bounds of their inputs (ReLU, Maximum)
        self.relaxed = [i for i, n in enumerate(self.nodes) if n.op is not None and not n.op.linear]
        #: nodes branch and bound may split (ReLU), in topological order
        self.splits = [i for i in self.relaxed if self.nodes[i].op.splittable]
        #: the last walk of each kind from a start node, {(start, kind, threads): (rows, seconds
        #: per row)}, shared by the graph's dtypes on this device (alpha.pass_seconds)
        self.timings: dict[tuple[int, str], float] = net.cache.setdefault(("walk_timings", str(device)), {})

    def to(self, dtype: torch.dtype) -> "BoundGraph":
        return compiled(self.net, self.device, dtype)

    def pre(self, node: int) -> int:
        """The input of a relaxed node (a ReLU's pre-activation, a Maximum's candidates)."""
        return self.nodes[node].inputs[0]

    @cached_property
    def ancestors(self) -> list[frozenset[int]]:
        """ancestors[i]: the nodes whose values node i depends on (i excluded)."""
        out: list[frozenset[int]] = []
        for node in self.nodes:
            found: set[int] = set()
            for i in node.inputs:
                found |= out[i] | {i}
            out.append(frozenset(found))
        return out

    def forward_all(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor | None]:
        """Values of nodes 0..upto (all if None) for a batch of flat inputs x (B, n_0)."""
        last = len(self.nodes) - 1 if upto is None else upto
        need = self.ancestors[last] | {last}
        values: list[torch.Tensor | None] = [x]
        for i in range(1, last + 1):
            node = self.nodes[i]
            values.append(node.op.forward([values[j] for j in node.inputs]) if i in need else None)
        return values

    def forward(self, x: torch.Tensor, node: int | None = None) -> torch.Tensor:
        """Value of `node` (default: the output) for a batch of flat inputs x (B, n_0)."""
        node = self.output if node is None else node
        return self.forward_all(x, node)[node]

    def interval(self, x_lo: torch.Tensor, x_hi: torch.Tensor, known: dict[int, Box] | None = None,
                 upto: int | None = None) -> list[Box | None]:
        """Interval bounds of nodes 0..upto over the box, intersected with `known` bounds where
        given (so later nodes profit from them). Boxes are (1, n) or (B, n)."""
        last = len(self.nodes) - 1 if upto is None else upto
        need = self.ancestors[last] | {last}
        bounds: list[Box | None] = [(x_lo.reshape(-1, x_lo.shape[-1]), x_hi.reshape(-1, x_hi.shape[-1]))]
        for i in range(1, last + 1):
            if i not in need:
                bounds.append(None)
                continue
            node = self.nodes[i]
            lo, hi = node.op.interval([bounds[j] for j in node.inputs])
            if known is not None and i in known:
                k_lo, k_hi = known[i]
                lo, hi = torch.maximum(lo, k_lo), torch.minimum(hi, k_hi)
            bounds.append((lo, hi))
        return bounds


def compiled(net: Network, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> BoundGraph:
    """The Network's bound graph on `device` in `dtype`, made once and kept in net.cache."""
    device = torch.device(device)
    key = ("bound_graph", str(device), dtype)
    graph = net.cache.get(key)
    if graph is None:
        graph = net.cache[key] = BoundGraph(net, device, dtype)
    return graph
