"""Small networks for tests, written straight to ONNX with onnx.helper (no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_onnx(weights: list[np.ndarray], biases: list[np.ndarray], input_shape=None) -> bytes:
    """Gemm/Relu chain; ReLU after every layer but the last. weights[k] has shape (out, in)."""
    n_in = weights[0].shape[1]
    input_shape = input_shape or [1, n_in]
    nodes, inits = [], []
    current = "x"
    if list(input_shape) != [1, n_in]:
        nodes.append(helper.make_node("Flatten", ["x"], ["flat"], axis=1))
        current = "flat"
    for k, (w, b) in enumerate(zip(weights, biases)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{k}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{k}")]
        out = f"z{k}" if k < len(weights) - 1 else "y"
        nodes.append(helper.make_node("Gemm", [current, f"W{k}", f"b{k}"], [out], transB=1))
        if k < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"h{k}"]))
            out = f"h{k}"
        current = out
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weights[-1].shape[0]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def random_mlp(rng: np.random.Generator, sizes: list[int]) -> tuple[list, list]:
    """Weights exactly representable in float32 (so ONNX and float64 agree exactly)."""
    ws = [np.float32(rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float64) for a, b in zip(sizes, sizes[1:])]
    bs = [np.float32(rng.normal(size=b) * 0.3).astype(np.float64) for b in sizes[1:]]
    return ws, bs
