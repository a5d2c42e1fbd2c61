"""Tracing an ONNX graph: symbolic tensors and the Network graph being built.

A tensor is either a constant (numpy) or symbolic (it depends on the network input; `Sym` names
the Network node holding its value, and its shape). Handlers of ONNX ops (in the modules of this
package) turn symbolic tensors into new nodes through the `Tracer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
from onnx import helper

from verifier.errors import ModelError
from verifier.ops import Affine

INPUT_NODE = "__input__"


@dataclass(frozen=True)
class Sym:
    node: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


class Tracer:
    """Holds the graph being built and names new nodes after the ONNX tensors they compute."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.graph = nx.DiGraph()
        self.graph.add_node(INPUT_NODE)
        self.onnx_node = None

    def where(self) -> str:
        n = self.onnx_node
        label = n.name or (n.output[0] if n.output else "?")
        return f"{self.source}: node '{label}' ({n.op_type})"

    def fail(self, message: str) -> ModelError:
        return ModelError(f"{self.where()}: {message}")

    def add(self, op, shape: tuple[int, ...]) -> Sym:
        base = name = self.onnx_node.output[0]
        k = 1
        while name in self.graph:  # one ONNX node may lower to several (Gemm: product, then + C)
            name, k = f"{base}#{k}", k + 1
        self.graph.add_node(name, op=op)
        for src in op.inputs:
            self.graph.add_edge(src, name)
        return Sym(name, tuple(int(d) for d in shape))

    def affine(self, x: Sym | list[Sym], weights, bias, shape) -> Sym:
        xs = x if isinstance(x, list) else [x]
        ws = weights if isinstance(weights, list) else [weights]
        size = int(np.prod(shape))
        b = np.zeros(size) if bias is None else np.asarray(bias, dtype=np.float64).ravel()
        origin = [self.onnx_node.name or self.onnx_node.output[0]]
        return self.add(Affine([s.node for s in xs], ws, b, origin), shape)


def attrs_of(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def const_arg(t: Tracer, value, what: str) -> np.ndarray:
    if isinstance(value, Sym):
        raise t.fail(f"{what} must be a constant, but it depends on the network input")
    return value


def shape_of(x) -> tuple[int, ...]:
    return x.shape if isinstance(x, Sym) else tuple(np.shape(x))


def image_of(t: Tracer, x, what: str) -> tuple[int, int, int]:
    """(C, H, W) of a symbolic (1, C, H, W) tensor: the one layout 2-D ops support."""
    if not isinstance(x, Sym):
        raise t.fail(f"{what} on a constant input is not supported")
    if len(x.shape) != 4 or x.shape[0] != 1:
        raise t.fail(f"{what} needs a (1, C, H, W) input, got shape {x.shape}")
    return x.shape[1], x.shape[2], x.shape[3]


def window_pads(t: Tracer, attrs: dict, spatial: tuple[int, int], kernel, strides, dilations,
                pooling: bool = False) -> tuple:
    """ONNX pads (top, left, bottom, right) of a 2-D window op, from `pads` or `auto_pad`."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
        if len(pads) != 4 or min(pads) < 0:
            raise t.fail(f"pads={list(pads)}: expected four non-negative values")
        return pads
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if pooling and any(d != 1 for d in dilations):
            # onnxruntime sizes these windows without the dilation, unlike the ONNX spec
            raise t.fail(f"auto_pad={auto_pad} with dilations={list(dilations)} is not supported for pooling")
        totals = [max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                  for size, k, s, d in zip(spatial, kernel, strides, dilations)]
        small = [tot // 2 for tot in totals]
        big = [tot - s for tot, s in zip(totals, small)]
        return (small[0], small[1], big[0], big[1]) if auto_pad == "SAME_UPPER" else (big[0], big[1], small[0], small[1])
    raise t.fail(f"auto_pad={auto_pad!r} is not supported")


def pooling_windows(t: Tracer, x, attrs: dict, what: str):
    """(windows, in_padded, output shape) of a 2-D pooling node (see linear_maps.pool_windows),
    with its attributes checked; shared by MaxPool and AveragePool."""
    from verifier.importers.linear_maps import pool_windows

    channels, height, width = image_of(t, x, what)
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", ()))
    if len(kernel) != 2:
        raise t.fail(f"only 2-D pooling is supported (kernel_shape={list(kernel)})")
    strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
    dilations = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
    pads = window_pads(t, attrs, (height, width), kernel, strides, dilations, pooling=True)
    windows, in_padded, (c, oh, ow) = pool_windows((channels, height, width), kernel, strides, pads, dilations,
                                                   bool(attrs.get("ceil_mode", 0)))
    if windows.shape[0] == 0:
        raise t.fail(f"the pooling window {list(kernel)} (dilations {list(dilations)}) does not fit input {x.shape}")
    if (windows < 0).all(axis=1).any():
        raise t.fail(f"a pooling window lies entirely in the padding (pads={list(pads)})")
    return windows, in_padded, (1, c, oh, ow)
