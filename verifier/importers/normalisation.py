"""Input normalisation outside the network: verify `x -> model((x - mean) / std)` in pixel space.

Many models are trained on normalised inputs (CIFAR-10: mean 0.4914, 0.4822, 0.4465 and std
0.2470, 0.2435, 0.2616 per channel) while eps, the `[0, 1]` domain and any counterexample are
meant in pixel units. Rather than teach every stage about a second input space, the
normalisation is prepended to the ONNX model itself (a Sub and a Div node in front of the
original input) before it is imported. Why the ONNX bytes: they are the one thing every stage
shares -- the importer builds the Network (bounds, MILP, attacks) from them, batch workers
reload them, and onnxruntime re-checks counterexamples on them -- so all of them see the same
composed network, and the results store's model hash tells a normalised run from a plain one.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from verifier.errors import InputError, ModelError
from verifier.importers.onnx_importer import _read_model, load_onnx
from verifier.network.graph import Network
from verifier.numbers import number_list

#: Opset from which Sub and Div broadcast numpy-style (a (1, C, 1, 1) constant over NCHW).
_BROADCAST_OPSET = 7


def parse_values(value, name: str) -> tuple[float, ...]:
    """One number or one per channel, from "0.49,0.48,0.45" (the command line), a number, or a
    sequence of numbers (the Python API, a TOML list). Refuses what is not a finite number."""
    return tuple(number_list(value, name, "0.5 or 0.4914,0.4822,0.4465"))


def check_std(std: Sequence[float], name: str = "std") -> None:
    bad = [s for s in std if s <= 0]
    if bad:
        raise InputError(f"{name} must be > 0 (the inputs are divided by it), got {bad[0]:g}")


def _constant_shape(values: tuple[float, ...], dims: list[int | None], name: str) -> tuple[int, ...]:
    """The shape that broadcasts `values` over the input: () for one value, (1, C, 1, ...) for
    one per channel on axis 1 of an input of rank >= 3 (NCHW, NCL)."""
    k = len(values)
    if k == 1:
        return ()
    if len(dims) < 3:
        raise InputError(f"{name} has {k} values, but the model's input (shape {dims}) has no channel axis "
                         f"(it is flat or 2-D): give one value")
    channels = dims[1]
    if channels is None:
        raise InputError(f"{name} has {k} values, but axis 1 of the model's input (shape {dims}) is dynamic: "
                         f"give one value")
    if channels != k:
        raise InputError(f"{name} has {k} values, but the model's input has {channels} channels (axis 1 of "
                         f"shape {dims}): give 1 or {channels} values")
    return (1, k) + (1,) * (len(dims) - 2)


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def normalise_model(model: onnx.ModelProto, mean: tuple[float, ...], std: tuple[float, ...], label: str,
                    names: tuple[str, str] = ("mean", "std")) -> bytes:
    """The bytes of `model` with its input renamed and fed through Sub(mean) and Div(std): the
    new model takes pixels. Constants are in the input's float type (as onnxruntime computes)."""
    check_std(std, names[1])
    g = model.graph
    constants = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in constants]
    if len(inputs) != 1:
        raise ModelError(f"{label}: expected one input tensor, found {len(inputs)}")
    x = inputs[0]
    dtype = helper.tensor_dtype_to_np_dtype(x.type.tensor_type.elem_type)
    if dtype.kind != "f":
        raise ModelError(f"{label}: input '{x.name}' is of type {dtype}, not floating point: cannot normalise it")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in x.type.tensor_type.shape.dim]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), _BROADCAST_OPSET)
    if opset < _BROADCAST_OPSET:
        raise ModelError(f"{label}: opset {opset} has no broadcasting Sub/Div; {names[0]}/{names[1]} need opset >= 7")
    shapes = (_constant_shape(mean, dims, names[0]), _constant_shape(std, dims, names[1]))
    identity = (all(m == 0 for m in mean), all(s == 1 for s in std))
    if all(identity):
        return model.SerializeToString()
    taken = {i.name for i in g.input} | constants | {o.name for o in g.output}
    taken |= {t for n in g.node for t in (n.name, *n.input, *n.output)}
    original = x.name
    x.name = _fresh(f"{original}_pixels", taken)  # the graph input is now the pixels
    steps = [(op, values, shape) for op, values, shape, skip in zip(("Sub", "Div"), (mean, std), shapes, identity)
             if not skip]
    current, nodes = x.name, []
    for k, (op, values, shape) in enumerate(steps):
        const = _fresh(f"{original}_{op.lower()}_constant", taken)
        tensor = numpy_helper.from_array(np.asarray(values, dtype=dtype).reshape(shape), const)
        out = original if k == len(steps) - 1 else _fresh(f"{original}_centred", taken)
        nodes += [helper.make_node("Constant", [], [const], value=tensor),
                  helper.make_node(op, [current, const], [out], name=_fresh(f"pixels_{op.lower()}", taken))]
        current = out
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)
    return model.SerializeToString()


def load_normalised(model, input_shape: tuple[int, ...] | None, mean, std,
                    names: tuple[str, str] = ("mean", "std")) -> Network:
    """`verifier.load(model, mean=..., std=...)`: the network `x -> model((x - mean) / std)`,
    for an ONNX path or bytes, a torch module or a loaded Network (which must keep its ONNX
    bytes). mean defaults to 0 and std to 1 when only the other is given; `names` are what
    errors call them (the CLI's "--mean", "--std")."""
    mean_values = parse_values(0.0 if mean is None else mean, names[0])
    std_values = parse_values(1.0 if std is None else std, names[1])
    check_std(std_values, names[1])
    if isinstance(model, Network) or _is_module(model):
        from verifier.api import load

        base = load(model, input_shape)
        if base.onnx_bytes is None:
            raise InputError(f"{base.name}: mean/std need the network's ONNX bytes (load it from an ONNX file)")
        proto, label, name = onnx.load_from_string(base.onnx_bytes), base.name, base.name
    else:
        proto, _, label = _read_model(model)
        name = os.path.basename(label) if label != "<onnx bytes>" else "network"
    try:
        net = load_onnx(normalise_model(proto, mean_values, std_values, label, names))
    except ModelError as e:  # name the user's file, not the composed bytes
        raise ModelError(str(e).replace("<onnx bytes>", label, 1)) from None
    net.name = name
    net.info["normalisation"] = {"mean": list(mean_values), "std": list(std_values)}
    return net


def _is_module(model) -> bool:
    from verifier.importers.torch_importer import is_torch_module

    return is_torch_module(model)
