"""ONNX handlers of the piecewise-linear ops, each lowered exactly to ReLU and Maximum nodes.

    Relu                 -> Relu
    LeakyRelu(alpha)     -> alpha z + (1 - alpha) relu(z)             (any alpha)
    Clip(lo, hi)         -> hi - relu(hi - lo - relu(z - lo))          (a chain of two ReLUs)
    MaxPool, GlobalMaxPool -> Maximum over each window's input positions

Lowering rather than new op types keeps one relaxation and one MILP encoding per nonlinearity;
intervals stay exact because each chain is monotone.
"""

from __future__ import annotations

import numpy as np

from verifier.importers.tracing import Sym, Tracer, const_arg, image_of, pooling_windows
from verifier.ops import Maximum, Relu
from verifier.ops.linear import DiagonalMap


def _relu(t: Tracer, args, attrs):
    x = args[0]
    if isinstance(x, Sym):
        return [t.add(Relu([x.node]), x.shape)]
    return [np.maximum(x, 0)]


def _shifted(t: Tracer, x: Sym, scale: float, shift) -> Sym:
    """scale * x + shift as an Affine node (shift broadcast to x's shape)."""
    bias = np.broadcast_to(np.asarray(shift, dtype=np.float64), x.shape).ravel()
    return t.affine(x, DiagonalMap(np.full(x.size, float(scale))), bias, x.shape)


def _leaky_relu(t: Tracer, args, attrs):
    x, alpha = args[0], float(attrs.get("alpha", 0.01))
    if not isinstance(x, Sym):
        return [np.where(x >= 0, x, alpha * x)]
    relu = t.add(Relu([x.node]), x.shape)
    return [t.affine([x, relu], [DiagonalMap(np.full(x.size, alpha)), DiagonalMap(np.full(x.size, 1.0 - alpha))],
                     None, x.shape)]


def _clip_bound(t: Tracer, args, attrs, position: int, key: str):
    """Clip's min or max: an input (opset >= 11) or an attribute (older), None if absent."""
    if len(args) > position and args[position] is not None:
        value = np.asarray(const_arg(t, args[position], f"Clip's {key}"), dtype=np.float64)
    elif key in attrs:
        value = np.asarray(attrs[key], dtype=np.float64)
    else:
        return None
    if value.size != 1:
        raise t.fail(f"Clip's {key} must be a scalar, got shape {value.shape}")
    value = float(value.ravel()[0])
    if value == (-np.inf if key == "min" else np.inf):
        return None  # e.g. torch's clamp(min=0) may export max = +inf: no bound
    if not np.isfinite(value):
        raise t.fail(f"Clip's {key}={value} is not supported")
    return value


def _clip(t: Tracer, args, attrs):
    x = args[0]
    lo, hi = _clip_bound(t, args, attrs, 1, "min"), _clip_bound(t, args, attrs, 2, "max")
    if not isinstance(x, Sym):
        return [np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)]
    if lo is not None:  # lo + relu(x - lo)
        x = _shifted(t, t.add(Relu([_shifted(t, x, 1.0, -lo).node]), x.shape), 1.0, lo)
    if hi is not None:  # hi - relu(hi - x)
        x = _shifted(t, t.add(Relu([_shifted(t, x, -1.0, hi).node]), x.shape), -1.0, hi)
    return [x]


def _max_pool(t: Tracer, args, attrs):
    x = args[0]
    if len(t.onnx_node.output) > 1 and t.onnx_node.output[1]:
        raise t.fail("MaxPool's Indices output is not supported")
    windows, _, shape = pooling_windows(t, x, attrs, "MaxPool")
    groups = -np.sort(-windows, axis=1)  # valid indices first, padding (-1) last
    return [t.add(Maximum([x.node], groups), shape)]


def _global_max_pool(t: Tracer, args, attrs):
    x = args[0]
    channels, height, width = image_of(t, x, "GlobalMaxPool")
    groups = np.arange(channels * height * width).reshape(channels, height * width)
    return [t.add(Maximum([x.node], groups), (1, channels, 1, 1))]


NONLINEAR_HANDLERS = {
    "Relu": _relu, "LeakyRelu": _leaky_relu, "Clip": _clip, "MaxPool": _max_pool,
    "GlobalMaxPool": _global_max_pool,
}
