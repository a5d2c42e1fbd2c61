"""Every op beyond Gemm/Conv/ReLU, on tiny networks written once with torch ops:

- the forward pass equals onnxruntime's on the exported ONNX (and torch's, in float64);
- the exact minimum margin (every label's MILP to optimality) equals the enumeration oracle
  of tests/pwl_oracle.py, which shares nothing with the verifier;
- the torch module and its exported ONNX file give the same verdicts and margins.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import verifier
from tests.pwl_oracle import TORCH_OPS, min_margin
from verifier import VerifyOptions
from verifier.ops import Maximum, Relu


def _params(seed: int, *shapes) -> list[torch.Tensor]:
    """Random float64 tensors whose values are float32-exact (ONNX stores float32)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g, dtype=torch.float32) * 0.8).double() for s in shapes]


def _cast(ps, x):
    return [p.to(x.dtype) for p in ps]


def maxpool_net(seed):
    w, b, v, c = _params(seed, (2, 1, 2, 2), (2,), (3, 2), (3,))
    def f(x, nl):
        cw, cb, lw, lb = _cast((w, b, v, c), x)
        h = nl.max_pool(F.conv2d(x, cw, cb), 2, 1)  # (2, 2, 2) -> (2, 1, 1), four candidates each
        return F.linear(nl.relu(h).flatten(1), lw, lb)
    return f, (1, 3, 3)


def maxpool_padded_net(seed):
    v, c = _params(seed, (3, 4), (3,))
    def f(x, nl):
        lw, lb = _cast((v, c), x)
        return F.linear(nl.max_pool(x, 2, 2, padding=1).flatten(1), lw, lb)  # windows of 1, 2, 2, 4
    return f, (1, 3, 3)


def global_max_pool_net(seed):
    w, b, v, c = _params(seed, (2, 1, 2, 2), (2,), (3, 2), (3,))
    def f(x, nl):
        cw, cb, lw, lb = _cast((w, b, v, c), x)
        return F.linear(nl.global_max_pool(F.conv2d(x, cw, cb)).flatten(1), lw, lb)
    f.global_pool = True
    return f, (1, 3, 3)


def average_pool_net(seed):
    w, b, v, c = _params(seed, (1, 1, 2, 2), (1,), (3, 9), (3,))
    def f(x, nl):
        cw, cb, lw, lb = _cast((w, b, v, c), x)
        h = nl.relu(F.conv2d(x, cw, cb))  # (1, 2, 2)
        h = F.avg_pool2d(h, 2, stride=1, padding=1, count_include_pad=False)  # (1, 3, 3)
        return F.linear(h.flatten(1), lw, lb)
    return f, (1, 3, 3)


def global_average_pool_net(seed):
    w, b, v, c = _params(seed, (2, 1, 2, 2), (2,), (3, 2), (3,))
    def f(x, nl):
        cw, cb, lw, lb = _cast((w, b, v, c), x)
        h = nl.relu(F.conv2d(x, cw, cb))  # (2, 1, 2)
        return F.linear(F.adaptive_avg_pool2d(h, 1).flatten(1), lw, lb)
    return f, (1, 2, 3)


def residual_net(seed):
    w1, w2, v, c = _params(seed, (1, 1, 3, 3), (1, 1, 3, 3), (3, 4), (3,))
    def f(x, nl):
        a, b_, lw, lb = _cast((w1, w2, v, c), x)
        h = nl.relu(F.conv2d(x, a, padding=1))
        h = nl.relu(x + F.conv2d(h, b_, padding=1))  # Add of two input-dependent tensors
        return F.linear(h.flatten(1), lw, lb)
    return f, (1, 2, 2)


def subtract_concat_net(seed):
    w1, v, c = _params(seed, (1, 1, 3, 3), (3, 12), (3,))
    def f(x, nl):
        a, lw, lb = _cast((w1, v, c), x)
        h = nl.relu(F.conv2d(x, a, padding=1) - x)  # Sub of two input-dependent tensors
        h = torch.cat([x, h, x - h], dim=1)  # Concat of input-dependent tensors
        return F.linear(h.flatten(1), lw, lb)
    return f, (1, 2, 2)


def batchnorm_net(seed):
    w, b, v, c, mean, var, gamma, beta = _params(seed, (3, 4), (3,), (3, 3), (3,), (3,), (3,), (3,), (3,))
    def f(x, nl):
        lw1, lb1, lw2, lb2, m, s, g, be = _cast((w, b, v, c, mean, var, gamma, beta), x)
        h = nl.relu(F.linear(x, lw1, lb1))
        h = F.batch_norm(h, m, s.abs() + 0.5, g, be, training=False)  # between two ReLUs: not foldable
        return F.linear(nl.relu(h), lw2, lb2)
    return f, (4,)


def pad_net(seed, mode="constant"):
    w, b, v, c = _params(seed, (1, 1, 2, 2), (1,), (3, 9), (3,))
    def f(x, nl):
        cw, cb, lw, lb = _cast((w, b, v, c), x)
        padded = F.pad(x, (1, 0, 0, 1), mode=mode, **({"value": 0.5} if mode == "constant" else {}))
        h = nl.relu(F.conv2d(padded, cw, cb))  # (1, 3, 3)... from a (1, 3, 3) input padded to 4x4
        return F.linear(h.flatten(1), lw, lb)
    return f, (1, 3, 3)


def leaky_relu_net(seed, alpha=0.2):
    w, b, v, c = _params(seed, (4, 3), (4,), (3, 4), (3,))
    def f(x, nl):
        lw1, lb1, lw2, lb2 = _cast((w, b, v, c), x)
        return F.linear(nl.leaky_relu(F.linear(x, lw1, lb1), alpha), lw2, lb2)
    return f, (3,)


def clip_net(seed, lo=-0.25, hi=0.375):
    w, b, v, c = _params(seed, (3, 3), (3,), (3, 3), (3,))
    def f(x, nl):
        lw1, lb1, lw2, lb2 = _cast((w, b, v, c), x)
        return F.linear(nl.clip(F.linear(x, lw1, lb1), lo, hi), lw2, lb2)
    return f, (3,)


def movement_net(seed):
    v, c = _params(seed, (3, 6), (3,))
    def f(x, nl):
        lw, lb = _cast((v, c), x)
        h = nl.relu(x[:, :, :2, :] - x[:, :, 1:, :])  # Slice; (1, 2, 2)
        top, bottom = torch.split(h, 1, dim=2)  # Split
        h = torch.cat([bottom, top, x[:, :, 0:1, :] * 0.5], dim=3)  # (1, 1, 6)
        return F.linear(h.flatten(1), lw, lb)
    return f, (1, 3, 2)


def gather_tile_expand_net(seed):
    v, c = _params(seed, (3, 8), (3,))
    def f(x, nl):
        lw, lb = _cast((v, c), x)
        row = x[:, 0, 1]  # Gather: (1, 2)
        tiled = nl.relu(row.repeat(1, 2) - 0.5)  # Tile: (1, 4)
        wide = x[:, :, 2:3, :].expand(-1, 1, 2, 2).flatten(1)  # Expand: (1, 4)
        return F.linear(torch.cat([tiled, wide], dim=1), lw, lb)
    return f, (1, 3, 2)


NETS = {
    "gather_tile_expand": gather_tile_expand_net,
    "movement": movement_net,
    "maxpool": maxpool_net, "maxpool_padded": maxpool_padded_net, "global_max_pool": global_max_pool_net,
    "average_pool": average_pool_net, "global_average_pool": global_average_pool_net,
    "residual_add": residual_net, "sub_concat": subtract_concat_net, "batchnorm": batchnorm_net,
    "pad_constant": pad_net, "pad_reflect": lambda s: pad_net(s, "reflect"),
    "pad_edge": lambda s: pad_net(s, "replicate"), "leaky_relu": leaky_relu_net, "clip": clip_net,
    "clip_min_only": lambda s: clip_net(s, 0.125, None), "clip_max_only": lambda s: clip_net(s, None, 0.25),
}

#: The ONNX op each network is there to exercise (checked in the exported graph).
EXERCISES = {
    "gather_tile_expand": "Tile",
    "movement": "Split",
    "maxpool": "MaxPool", "maxpool_padded": "MaxPool", "global_max_pool": "GlobalMaxPool",
    "average_pool": "AveragePool", "global_average_pool": "GlobalAveragePool", "residual_add": "Add",
    "sub_concat": "Concat", "batchnorm": "BatchNormalization", "pad_constant": "Pad", "pad_reflect": "Pad",
    "pad_edge": "Pad", "leaky_relu": "LeakyRelu", "leaky_relu_negative": "LeakyRelu", "leaky_relu_steep": "LeakyRelu",
    "clip_crossed": "Clip", "clip": "Clip", "clip_min_only": "Clip", "clip_max_only": "Clip",
}


class Wrapped(nn.Module):
    def __init__(self, f) -> None:
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x, TORCH_OPS)


def export(f, input_shape) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(Wrapped(f), (torch.zeros((1, *input_shape)),), buffer, dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"], do_constant_folding=False)
    model = onnx.load_from_string(buffer.getvalue())
    if getattr(f, "global_pool", False):  # torch writes a global max pool as a MaxPool over the whole image
        node = next(n for n in model.graph.node if n.op_type == "MaxPool")
        node.op_type = "GlobalMaxPool"
        del node.attribute[:]
    return model.SerializeToString()


@pytest.mark.parametrize("name", sorted(NETS))
def test_forward_matches_onnxruntime_and_torch(name):
    f, shape = NETS[name](1)
    data = export(f, shape)
    assert EXERCISES[name] in {n.op_type for n in onnx.load_from_string(data).graph.node}
    net = verifier.load(data)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.uniform(-1, 2, (1, *shape)).astype(np.float32)
        expected = session.run(None, {"x": x})[0].ravel()
        ours = net.forward(x.astype(np.float64).ravel())
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
        exact = f(torch.as_tensor(x, dtype=torch.float64), TORCH_OPS).numpy().ravel()
        np.testing.assert_allclose(ours, exact, rtol=1e-6, atol=1e-6)  # float32 constants of the export


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("seed", range(3))
def test_exact_margin_matches_enumeration(name, seed):
    f, shape = NETS[name](10 + seed)
    net = verifier.load(export(f, shape))
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, shape)
    eps = float(rng.uniform(0.1, 0.3))
    label = int(rng.integers(3))
    flat = x.ravel()
    lo, hi = np.clip(flat - eps, 0, 1), np.clip(flat + eps, 0, 1)
    expected = min_margin(f, shape, lo, hi, label, 3)
    r = verifier.verify(net, x, eps, label=label, options=VerifyOptions(exact=True), timeout=60)
    assert r.margin_lower == pytest.approx(expected, abs=1e-6)
    assert r.margin_upper == pytest.approx(expected, abs=1e-6)
    quick = verifier.verify(net, x, eps, label=label, timeout=60)
    if abs(expected) > 1e-4:
        assert quick.status == (verifier.Status.ROBUST if expected > 0 else verifier.Status.ADVERSARIAL)


def test_maxpool_binaries_follow_the_bounds():
    """MaxPool gets one binary per candidate the bounds leave alive, and none for a window
    whose leader dominates (MIPVerify's `maximum`)."""
    from verifier.bounds.interval import interval_bounds
    from verifier.encode.network import encode_network

    f, shape = maxpool_net(3)
    net = verifier.load(export(f, shape))
    node = next(n for n in net.order if isinstance(net.op(n), Maximum))
    x = np.random.default_rng(0).uniform(0, 1, net.input_size)
    tight = encode_network(net, interval_bounds(net, x, x))  # a point: every window decided
    assert tight.max_binaries == []
    wide = encode_network(net, interval_bounds(net, np.zeros_like(x), np.ones_like(x)))
    bounds = interval_bounds(net, np.zeros_like(x), np.ones_like(x))
    _, alive = net.op(node).candidates(*bounds[net.op(node).inputs[0]])
    binaries = sum(a.size for *_, a in wide.max_binaries)
    assert binaries == int(alive[alive.sum(axis=1) > 1].sum())


@pytest.mark.parametrize("name", ["maxpool", "residual_add", "leaky_relu"])
def test_torch_module_and_its_onnx_agree(name):
    f, shape = NETS[name](5)
    module = Wrapped(f).float()
    via_module = verifier.load(module, input_shape=shape)
    via_onnx = verifier.load(export(f, shape))
    rng = np.random.default_rng(1)
    for k in range(3):
        x = rng.uniform(0.2, 0.8, shape)
        eps = 0.05 * (k + 1)
        a = verifier.verify(module, x, eps, options=VerifyOptions(exact=True), timeout=60)
        b = verifier.verify(via_onnx, x, eps, options=VerifyOptions(exact=True), timeout=60)
        assert a.status == b.status
        assert a.margin_lower == pytest.approx(b.margin_lower, abs=1e-6)
        np.testing.assert_allclose(via_module.forward(x.ravel()), via_onnx.forward(x.ravel()), atol=1e-9)
    kinds = {type(via_module.op(n)) for n in via_module.order}
    assert Relu in kinds or Maximum in kinds


def test_torch_module_errors_are_one_line():
    from verifier.errors import ModelError

    with pytest.raises(ModelError, match="needs input_shape"):
        verifier.load(nn.Linear(3, 2))
    with pytest.raises(ModelError) as err:
        verifier.load(nn.Sequential(nn.Linear(3, 2), nn.Tanh()), input_shape=(3,))
    assert "Tanh" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError) as err:
        verifier.load(nn.Linear(3, 2), input_shape=(4,))
    assert "\n" not in str(err.value)


def _single_op_model(op_type: str, x_shape, out_shape, inputs=(), **attrs) -> bytes:
    from onnx import TensorProto, helper
    extra = [helper.make_tensor(f"c{k}", TensorProto.INT64 if v.dtype.kind == "i" else TensorProto.FLOAT, v.shape, v.ravel())
             for k, v in enumerate(inputs)]
    node = helper.make_node(op_type, ["x"] + [f"c{k}" for k in range(len(inputs))], ["y"], name="the_node", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], extra)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


@pytest.mark.parametrize("case, expected", [
    (lambda: _single_op_model("Pad", (1, 1, 2, 2), (1, 1, 4, 4), [np.array([0, 0, 1, 1, 0, 0, 1, 1])], mode="bogus"),
     "mode='bogus'"),
    (lambda: _single_op_model("MaxPool", (1, 1, 4, 4), (1, 1, 2), kernel_shape=[2]), "2-D pooling"),
    (lambda: _single_op_model("MaxPool", (1, 8), (1, 4), kernel_shape=[2, 2]), "(1, C, H, W)"),
    (lambda: _single_op_model("Sigmoid", (1, 4), (1, 4)), "'Sigmoid' is not supported"),
    (lambda: _single_op_model("Clip", (1, 4), (1, 4), [np.zeros(2, np.float32)]), "must be a scalar"),
    (lambda: _single_op_model("AveragePool", (1, 1, 4, 4), (1, 1, 2, 2), kernel_shape=[2, 2], auto_pad="WRONG"),
     "auto_pad"),
])
def test_unsupported_inputs_fail_early_naming_the_node(case, expected):
    from verifier.errors import ModelError

    with pytest.raises(ModelError) as err:
        verifier.load(case())
    message = str(err.value)
    assert expected in message and "the_node" in message and "\n" not in message


def test_dynamic_input_dimension_is_named():
    from onnx import TensorProto, helper

    from verifier.errors import ModelError
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "width"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "width"])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()
    with pytest.raises(ModelError, match="dynamic dimension 1 .'width'."):
        verifier.load(data)


def _window_model(op: str, x_shape, **attrs) -> bytes:
    from onnx import TensorProto, helper
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9).SerializeToString()


def _pooling_cases():
    """A spread of window settings: ceil_mode, dilations, asymmetric pads, count_include_pad, SAME."""
    rng = np.random.default_rng(7)
    cases = []
    for op in ("MaxPool", "AveragePool"):
        for _ in range(14):
            k = tuple(int(v) for v in rng.integers(1, 4, 2))
            attrs = dict(kernel_shape=list(k), strides=[int(v) for v in rng.integers(1, 4, 2)],
                         pads=[int(rng.integers(0, kk)) for kk in k + k], ceil_mode=int(rng.integers(2)))
            if rng.random() < 0.4:
                attrs["dilations"] = [int(v) for v in rng.integers(1, 3, 2)]
            if op == "AveragePool":
                attrs["count_include_pad"] = int(rng.integers(2))
            cases.append((op, attrs))
        cases.append((op, dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER")))
        cases.append((op, dict(kernel_shape=[3, 3], strides=[2, 1], auto_pad="SAME_LOWER")))
    return cases


@pytest.mark.parametrize("op, attrs", _pooling_cases())
def test_pooling_windows_match_onnxruntime(op, attrs):
    data = _window_model(op, (1, 2, 7, 6), **attrs)
    x = np.random.default_rng(0).normal(size=(1, 2, 7, 6)).astype(np.float32)
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    net = verifier.load(data)
    np.testing.assert_allclose(net.forward(x.astype(np.float64).ravel()), expected.ravel(), rtol=1e-5, atol=1e-6)
    assert tuple(net.sizes.values())[-1] == expected.size


@pytest.mark.parametrize("pads, mode, axes", [
    ([0, 0, -1, 2, 0, 0, 1, -2], "constant", None), ([0, 0, 2, 1, 0, 0, 1, 2], "wrap", None),
    ([0, 0, 1, 1, 0, 0, 2, 0], "reflect", None), ([1, 2, 0, 1], "edge", [2, 3]), ([2, -1], "constant", [-1]),
])
def test_pad_variants_match_onnxruntime(pads, mode, axes):
    from onnx import TensorProto, helper
    inputs = [helper.make_tensor("pads", TensorProto.INT64, [len(pads)], pads),
              helper.make_tensor("value", TensorProto.FLOAT, [], [0.75])]
    names = ["x", "pads", "value"]
    if axes is not None:
        inputs.append(helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes))
        names.append("axes")
    node = helper.make_node("Pad", names, ["y"], mode=mode)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inputs)
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9).SerializeToString()
    x = np.random.default_rng(1).normal(size=(1, 1, 4, 5)).astype(np.float32)
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(verifier.load(data).forward(x.astype(np.float64).ravel()), expected.ravel(), atol=1e-7)


@pytest.mark.parametrize("model, expected", [
    (lambda: _window_model("MaxPool", (1, 1, 5, 5), kernel_shape=[2, 2], dilations=[2, 2], auto_pad="SAME_UPPER"),
     "not supported for pooling"),
    (lambda: _window_model("MaxPool", (1, 1, 3, 3), kernel_shape=[2, 2], dilations=[3, 3]), "does not fit"),
    (lambda: _window_model("Pad", (1, 1, 2, 2), mode="reflect", pads=[0, 0, 2, 0, 0, 0, 0, 0]), "reflect pads"),
])
def test_window_and_pad_misfits_are_refused(model, expected):
    from verifier.errors import ModelError
    with pytest.raises(ModelError, match=expected):
        verifier.load(model())


def test_cast_to_integer_of_an_input_dependent_tensor_is_refused():
    from onnx import TensorProto, helper

    from verifier.errors import ModelError
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT32, name="to_int"),
             helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()
    with pytest.raises(ModelError, match="to_int.*int32"):
        verifier.load(data)
