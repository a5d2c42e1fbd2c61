"""ONNX file -> Network.

Tensors are traced through the graph: a tensor is either a constant (numpy) or symbolic (it
depends on the network input; `Sym` names the Network node holding its value and its shape).
Linear ops on symbolic tensors become `Affine` nodes over flat vectors, Reshape-like ops only
relabel the shape, and ops on constants are evaluated. Anything else fails with one line naming
the node, its op type and what is supported.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from verifier.errors import ModelError
from verifier.importers import linear_maps as lm
from verifier.importers.nonlinear_ops import NONLINEAR_HANDLERS
from verifier.importers.reference_ops import MOVEMENT_OPS, evaluate, move_entries
from verifier.importers.structure_ops import STRUCTURE_HANDLERS
from verifier.importers.tracing import (INPUT_NODE, Sym, Tracer, attrs_of, const_arg, image_of,
                                        shape_of, window_pads)
from verifier.network.graph import Network
from verifier.network.simplify import fold_affine_chains
from verifier.ops.linear import ConvMap, DiagonalMap

# ---- handlers: (tracer, args, attrs) -> list of outputs -------------------------------------

def _identity(t, args, attrs):
    return [args[0]]


def _constant(t, args, attrs):
    if "value" in attrs:
        value = numpy_helper.to_array(attrs["value"])
        return [value.astype(np.float64) if value.dtype.kind == "f" else value]
    for key in ("value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            return [np.asarray(attrs[key])]
    raise t.fail(f"unsupported Constant attributes {sorted(attrs)}")


def _reshape_to(t, x, shape):
    shape = tuple(int(d) for d in shape)
    if isinstance(x, Sym):
        if int(np.prod(shape)) != x.size:
            raise t.fail(f"cannot reshape {x.shape} to {shape}")
        return Sym(x.node, shape)
    return np.reshape(x, shape)


def _flatten(t, args, attrs):
    x = args[0]
    shape = shape_of(x)
    axis = attrs.get("axis", 1) % (len(shape) + 1) if shape else 0
    return [_reshape_to(t, x, (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))]


def _reshape(t, args, attrs):
    x = args[0]
    target = [int(d) for d in const_arg(t, args[1], "the target shape")]
    shape = shape_of(x)
    if not attrs.get("allowzero", 0):
        target = [shape[i] if d == 0 else d for i, d in enumerate(target)]
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1]))
        target[target.index(-1)] = int(np.prod(shape)) // max(known, 1)
    return [_reshape_to(t, x, target)]


def _squeeze_axes(t, args, attrs):
    if len(args) > 1 and args[1] is not None:
        return [int(a) for a in const_arg(t, args[1], "axes")]
    return list(attrs.get("axes", []))


def _squeeze(t, args, attrs):
    x = args[0]
    shape = list(shape_of(x))
    axes = [a % len(shape) for a in _squeeze_axes(t, args, attrs)] or [i for i, d in enumerate(shape) if d == 1]
    return [_reshape_to(t, x, [d for i, d in enumerate(shape) if i not in axes])]


def _unsqueeze(t, args, attrs):
    x = args[0]
    shape = list(shape_of(x))
    axes = _squeeze_axes(t, args, attrs)
    rank = len(shape) + len(axes)
    for a in sorted(a % rank for a in axes):
        shape.insert(a, 1)
    return [_reshape_to(t, x, shape)]


def _transpose(t, args, attrs):
    x = args[0]
    shape = shape_of(x)
    perm = tuple(attrs.get("perm", range(len(shape) - 1, -1, -1)))
    if not isinstance(x, Sym):
        return [np.transpose(x, perm)]
    return [t.affine(x, lm.permutation(x.shape, perm), None, tuple(shape[p] for p in perm))]


def _gemm(t, args, attrs):
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if attrs.get("transA", 0):
        a = _transpose(t, [a], {"perm": (1, 0)})[0]
    if attrs.get("transB", 0):
        b = _transpose(t, [b], {"perm": (1, 0)})[0]
    out = _matmul(t, [a, b], {})[0]
    out = _scale_shift(t, out, alpha, None)
    if c is not None:
        out = _binary(t, [out, beta * const_arg(t, c, "Gemm's C")], "Add")
    return [out]


def _scale_shift(t, x, scale, shift):
    if isinstance(x, Sym):
        if scale == 1.0 and shift is None:
            return x
        return t.affine(x, DiagonalMap(np.full(x.size, float(scale))), shift, x.shape)
    return x * scale


def _matmul(t, args, attrs):
    x, y = args
    if isinstance(x, Sym) and isinstance(y, Sym):
        raise t.fail("the product of two input-dependent tensors is not piecewise linear")
    if not isinstance(x, Sym) and not isinstance(y, Sym):
        return [np.matmul(x, y)]
    if isinstance(x, Sym):
        w = np.asarray(y, dtype=np.float64)
        w = w.reshape(w.shape[-2:]) if w.ndim > 2 and int(np.prod(w.shape[:-2])) == 1 else w
        if w.ndim != 2 or x.shape[-1] != w.shape[0]:
            raise t.fail(f"cannot multiply input-dependent {x.shape} by constant {np.shape(y)}")
        out = (x.shape[:-1] if len(x.shape) > 1 else ()) + (w.shape[1],)
        return [t.affine(x, lm.right_matmul(x.shape, w), None, out)]
    w = np.asarray(x, dtype=np.float64)
    w = w.reshape(w.shape[-2:]) if w.ndim > 2 and int(np.prod(w.shape[:-2])) == 1 else w
    k_axis = -2 if len(y.shape) > 1 else -1
    if w.ndim != 2 or y.shape[k_axis] != w.shape[1]:
        raise t.fail(f"cannot multiply constant {np.shape(x)} by input-dependent {y.shape}")
    out = (w.shape[0],) if len(y.shape) == 1 else y.shape[:-2] + (w.shape[0], y.shape[-1])
    return [t.affine(y, lm.left_matmul(w, y.shape), None, out)]


def _binary(t, args, op_type):
    x, y = args
    if not isinstance(x, Sym) and not isinstance(y, Sym):
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op_type](x, y)
    if isinstance(x, Sym) and isinstance(y, Sym):
        if op_type not in ("Add", "Sub"):
            raise t.fail("the product or quotient of two input-dependent tensors is not piecewise linear")
        if x.shape != y.shape:
            raise t.fail(f"broadcasting between input-dependent tensors {x.shape} and {y.shape} is not supported")
        ones = np.ones(x.size)
        return t.affine([x, y], [DiagonalMap(ones), DiagonalMap(ones if op_type == "Add" else -ones)], None, x.shape)
    sym, const, sym_first = (x, y, True) if isinstance(x, Sym) else (y, x, False)
    const = np.asarray(const, dtype=np.float64)
    try:
        full = np.broadcast_shapes(sym.shape, const.shape)
    except ValueError:
        raise t.fail(f"shapes {sym.shape} and {const.shape} do not broadcast") from None
    if tuple(full) != sym.shape:
        raise t.fail(f"a constant of shape {const.shape} would enlarge input-dependent {sym.shape}")
    c = np.broadcast_to(const, sym.shape).ravel()
    eye, minus = DiagonalMap(np.ones(sym.size)), DiagonalMap(-np.ones(sym.size))
    if op_type == "Add":
        return t.affine(sym, eye, c, sym.shape)
    if op_type == "Sub":
        return t.affine(sym, eye, -c, sym.shape) if sym_first else t.affine(sym, minus, c, sym.shape)
    if op_type == "Mul":
        return t.affine(sym, DiagonalMap(c), None, sym.shape)
    if not sym_first:
        raise t.fail("dividing by an input-dependent tensor is not piecewise linear")
    if np.any(c == 0):
        raise t.fail("division by zero in a constant divisor")
    return t.affine(sym, DiagonalMap(1.0 / c), None, sym.shape)


def _neg(t, args, attrs):
    return [_scale_shift(t, args[0], -1.0, None)] if isinstance(args[0], Sym) else [-args[0]]


def _conv(t, args, attrs):
    x = args[0]
    weight = np.asarray(const_arg(t, args[1], "the Conv weight"), dtype=np.float64)
    bias = const_arg(t, args[2], "the Conv bias") if len(args) > 2 and args[2] is not None else None
    if weight.ndim != 4:
        raise t.fail(f"only 2-D convolutions are supported (weight {weight.shape})")
    channels, height, width = image_of(t, x, "Conv")
    kh, kw = weight.shape[2:]
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    group = int(attrs.get("group", 1))
    if channels != weight.shape[1] * group or weight.shape[0] % group:
        raise t.fail(f"weight {weight.shape} does not fit input {x.shape} with group={group}")
    pads = window_pads(t, attrs, (height, width), (kh, kw), strides, dilations)
    try:
        conv = ConvMap(weight, (channels, height, width), strides, pads, dilations, group)
    except ValueError as e:
        raise t.fail(str(e)) from None
    m, oh, ow = conv.out_shape
    b = None if bias is None else np.repeat(np.asarray(bias, dtype=np.float64), oh * ow)
    return [t.affine(x, conv, b, (1, m, oh, ow))]


def _batchnorm(t, args, attrs):
    x = args[0]
    scale, shift, mean, var = (np.asarray(const_arg(t, a, "BatchNormalization parameters"), dtype=np.float64)
                               for a in args[1:5])
    gain = scale / np.sqrt(var + attrs.get("epsilon", 1e-5))
    offset = shift - mean * gain
    if not isinstance(x, Sym):
        shape = (1, -1) + (1,) * (np.ndim(x) - 2)
        return [x * gain.reshape(shape) + offset.reshape(shape)]
    spatial = int(np.prod(x.shape[2:])) if len(x.shape) > 2 else 1
    return [t.affine(x, DiagonalMap(np.repeat(gain, spatial)), np.repeat(offset, spatial), x.shape)]


def _shape(t, args, attrs):
    x = args[0]
    return [np.asarray(shape_of(x), dtype=np.int64)]


def _cast(t, args, attrs):
    x = args[0]
    target = helper.tensor_dtype_to_np_dtype(attrs["to"])
    if isinstance(x, Sym):
        # Values are float64 here; a cast to float32/64 keeps them (up to float32 rounding, as
        # everywhere). Integer, bool or half casts change values: not piecewise linear.
        if target not in (np.float32, np.float64):
            raise t.fail(f"a cast of an input-dependent tensor to {np.dtype(target).name} is not supported")
        return [x]
    return [x.astype(target)]


HANDLERS = {
    "Identity": _identity, "Dropout": _identity, "Constant": _constant,
    "Flatten": _flatten, "Reshape": _reshape, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Transpose": _transpose, "Gemm": _gemm, "MatMul": _matmul,
    "Add": lambda t, a, _: [_binary(t, a, "Add")], "Sub": lambda t, a, _: [_binary(t, a, "Sub")],
    "Mul": lambda t, a, _: [_binary(t, a, "Mul")], "Div": lambda t, a, _: [_binary(t, a, "Div")],
    "Neg": _neg, "Conv": _conv, "BatchNormalization": _batchnorm, "Shape": _shape,
    "Cast": _cast, **NONLINEAR_HANDLERS, **STRUCTURE_HANDLERS,
}


def _format_hint(data: bytes) -> str:
    """What a file that is not ONNX probably is, for the one-line error."""
    if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
        return ("; it looks like a PyTorch checkpoint (torch.save): load the module in Python and pass it to "
                "verifier.load(module, input_shape=...), or export it with torch.onnx.export")
    return "; expected an ONNX file (.onnx) as written by torch.onnx.export or onnx.save"


def _read_model(source: str | bytes | os.PathLike) -> tuple[onnx.ModelProto, bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        data, label = bytes(source), "<onnx bytes>"
    elif not isinstance(source, (str, os.PathLike)):
        hint = (" (a state dict? load it into its torch.nn.Module with load_state_dict and pass the module "
                "with input_shape=...)") if isinstance(source, dict) else ""
        raise ModelError(f"expected an ONNX model (a path or bytes) or a torch.nn.Module, got a value of type "
                         f"{type(source).__name__}{hint}")
    else:
        label = os.fspath(source)
        try:
            with open(label, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelError(f"{label}: cannot read model file: {e.strerror}") from None
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # onnx raises DecodeError and friends
        raise ModelError(f"{label}: not a valid ONNX model ({type(e).__name__}){_format_hint(data)}") from None
    if not model.graph.node:
        raise ModelError(f"{label}: not a valid ONNX model (empty graph)")
    return model, data, label


def load_onnx(source: str | bytes | os.PathLike) -> Network:
    """Import an ONNX model. The batch dimension (if symbolic or 1) is dropped from shapes."""
    model, data, label = _read_model(source)
    g = model.graph
    initializers = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    inputs = [i for i in g.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"{label}: expected one input tensor, found {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = []
    for k, d in enumerate(dims):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif k == 0:
            shape.append(1)  # symbolic batch dimension
        else:
            raise ModelError(f"{label}: input '{inputs[0].name}' has a dynamic dimension {k} ({d.dim_param!r})")
    if not shape:
        raise ModelError(f"{label}: input '{inputs[0].name}' has no shape")
    tracer = Tracer(label)
    env: dict = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in initializers.items()}
    env[inputs[0].name] = Sym(INPUT_NODE, tuple(shape))
    env[""] = None
    for node in g.node:
        tracer.onnx_node = node
        handler = HANDLERS.get(node.op_type)
        if node.domain not in ("", "ai.onnx"):
            raise tracer.fail(f"op domain '{node.domain}' is not supported")
        try:
            args = [env[name] for name in node.input]
        except KeyError as e:
            raise tracer.fail(f"input tensor {e} is not defined before use") from None
        symbolic = any(isinstance(a, Sym) for a in args)
        if not symbolic and (handler is None or node.op_type in MOVEMENT_OPS):
            outputs = evaluate(tracer, args)
        elif node.op_type in MOVEMENT_OPS and isinstance(args[0], Sym):
            outputs = move_entries(tracer, args)
        elif handler is None:
            supported = sorted(set(HANDLERS) | MOVEMENT_OPS)
            raise tracer.fail(f"op type '{node.op_type}' is not supported on input-dependent tensors "
                              f"(supported: {', '.join(supported)})")
        else:
            outputs = handler(tracer, args, attrs_of(node))
        for name, value in zip(node.output, outputs):
            env[name] = value
    out = env.get(g.output[0].name)
    if not isinstance(out, Sym) or out.node == INPUT_NODE:
        raise ModelError(f"{label}: output '{g.output[0].name}' is not computed by any supported op from the input")
    input_shape = tuple(shape[1:]) if len(shape) > 1 and shape[0] == 1 else tuple(shape)
    graph = fold_affine_chains(tracer.graph, INPUT_NODE, out.node)
    name = os.path.basename(label) if label != "<onnx bytes>" else "network"
    return Network(graph, INPUT_NODE, input_shape, out.node, data, tuple(shape), name,
                   {"onnx_input": inputs[0].name, "onnx_output": g.output[0].name})
