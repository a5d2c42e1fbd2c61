"""ONNX handlers of the linear ops that move or average entries: AveragePool,
GlobalAveragePool, Pad and Concat. Each becomes one sparse `Affine` map built by index
arithmetic (never by probing with basis vectors)."""

from __future__ import annotations

import numpy as np

from verifier.importers import linear_maps as lm
from verifier.importers.tracing import Sym, Tracer, const_arg, image_of, pooling_windows, shape_of


def _average_pool(t: Tracer, args, attrs):
    x = args[0]
    windows, in_padded, shape = pooling_windows(t, x, attrs, "AveragePool")
    counted = in_padded if attrs.get("count_include_pad", 0) else windows >= 0
    divisors = counted.sum(axis=1).astype(np.float64)
    matrix = lm.average_of_windows(windows, divisors, x.size)
    return [t.affine(x, matrix, None, shape)]


def _global_average_pool(t: Tracer, args, attrs):
    x = args[0]
    channels, height, width = image_of(t, x, "GlobalAveragePool")
    windows = np.arange(channels * height * width).reshape(channels, height * width)
    matrix = lm.average_of_windows(windows, np.full(channels, float(height * width)), x.size)
    return [t.affine(x, matrix, None, (1, channels, 1, 1))]


def _pad(t: Tracer, args, attrs):
    x = args[0]
    shape = shape_of(x)
    rank = len(shape)
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise t.fail(f"mode={mode!r} is not supported (constant, edge, reflect, wrap)")
    if len(args) > 1 and args[1] is not None:
        pads = [int(p) for p in const_arg(t, args[1], "Pad's pads")]
        value = const_arg(t, args[2], "Pad's constant_value") if len(args) > 2 and args[2] is not None else 0.0
        axes = [int(a) % rank for a in const_arg(t, args[3], "Pad's axes")] if len(args) > 3 and args[3] is not None else list(range(rank))
    else:  # opset < 11: attributes
        pads, value, axes = [int(p) for p in attrs.get("pads", ())], attrs.get("value", 0.0), list(range(rank))
    if len(pads) != 2 * len(axes):
        raise t.fail(f"pads={pads} does not fit {len(axes)} axes of shape {shape}")
    width = [(0, 0)] * rank
    for k, axis in enumerate(axes):
        width[axis] = (pads[k], pads[k + len(axes)])
    value = float(np.asarray(value).ravel()[0]) if np.size(value) else 0.0
    source = np.arange(int(np.prod(shape))).reshape(shape)
    crop = tuple(slice(max(-b, 0), shape[i] - max(-e, 0)) for i, (b, e) in enumerate(width))
    grow = [(max(b, 0), max(e, 0)) for b, e in width]
    cropped = source[crop]
    if mode == "reflect" and any(max(b, e) >= max(d, 1) for (b, e), d in zip(grow, cropped.shape)):
        raise t.fail(f"reflect pads {pads} must be smaller than the dimensions {cropped.shape}")
    try:
        if mode == "constant":
            source = np.pad(cropped, grow, mode="constant", constant_values=-1)
        else:
            source = np.pad(cropped, grow, mode=mode)
    except ValueError as e:
        raise t.fail(f"cannot pad shape {shape} by {pads} in mode {mode!r}: {e}") from None
    if not isinstance(x, Sym):
        flat = np.asarray(x, dtype=np.float64).ravel()
        return [np.where(source >= 0, flat[np.maximum(source, 0)], value)]
    bias = np.where(source.ravel() >= 0, 0.0, value)
    return [t.affine(x, lm.index_map(source.ravel(), x.size), bias, source.shape)]


def _concat(t: Tracer, args, attrs):
    if not any(isinstance(a, Sym) for a in args):
        return [np.concatenate([np.atleast_1d(p) for p in args], axis=attrs.get("axis", 0))]
    shapes = [shape_of(a) for a in args]
    rank = len(shapes[0])
    axis = int(attrs.get("axis", 0)) % max(rank, 1)
    if any(len(s) != rank or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:] for s in shapes):
        raise t.fail(f"shapes {shapes} do not concatenate along axis {axis}")
    # Number every input entry globally; constants get -1 and contribute their value as bias.
    sources, values, offset = [], [], 0
    for a, s in zip(args, shapes):
        n = int(np.prod(s))
        if isinstance(a, Sym):
            sources.append(np.arange(offset, offset + n).reshape(s))
            values.append(np.zeros(s))
            offset += n
        else:
            sources.append(np.full(s, -1))
            values.append(np.asarray(a, dtype=np.float64))
    joined = np.concatenate(sources, axis=axis)
    source = joined.ravel()
    bias = np.concatenate(values, axis=axis).ravel()
    syms, weights, start = [], [], 0
    for a in args:
        if isinstance(a, Sym):
            local = np.where((source >= start) & (source < start + a.size), source - start, -1)
            syms.append(a)
            weights.append(lm.index_map(local, a.size))
            start += a.size
    return [t.affine(syms, weights, bias, joined.shape)]


STRUCTURE_HANDLERS = {
    "AveragePool": _average_pool, "GlobalAveragePool": _global_average_pool, "Pad": _pad, "Concat": _concat,
}
