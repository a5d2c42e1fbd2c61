"""Imported networks compute what onnxruntime computes, on the shipped benchmark networks and
on torch-exported models with the layers and input layouts users bring."""

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import verifier
from verifier.errors import ModelError

DATA = Path(__file__).parent / "data"


def export(module: nn.Module, shape) -> bytes:
    module.eval()
    buf = io.BytesIO()
    torch.onnx.export(module, torch.zeros(shape), buf, dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    return buf.getvalue()


def ort_logits(model: bytes | str, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                             providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.astype(np.float32)})[0]


def assert_matches_ort(model, n=5, seed=0):
    net = verifier.load(model)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.uniform(0, 1, net.onnx_input_shape).astype(np.float32)
        expected = ort_logits(model, x).ravel()
        got = net.forward(x.astype(np.float64).ravel())
        assert np.allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
    return net


@pytest.mark.parametrize("name", ["wk17a_linf0.1.onnx", "mnist-net_256x2.onnx"])
def test_benchmark_networks_match_onnxruntime(name):
    net = assert_matches_ort(DATA / name)
    assert net.output_size == 10


class Normalise(nn.Module):
    def forward(self, x):
        return (x - 0.1307) / 0.3081


class ToSequence(nn.Module):
    """A transpose/reshape detour of the kind torch graphs contain."""

    def forward(self, x):
        return x.transpose(1, 2).reshape(x.shape[0], -1)


@pytest.mark.parametrize("shape,body", [
    ((1, 784, 1), lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 20), nn.ReLU(), nn.Linear(20, 10))),
    ((1, 784), lambda: nn.Sequential(Normalise(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 16),
                                     nn.ReLU(), nn.Linear(16, 10))),
    ((1, 1, 28, 28), lambda: nn.Sequential(Normalise(), nn.Conv2d(1, 4, 3, stride=2, padding=1),
                                           nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 4, stride=2),
                                           nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))),
    ((1, 1, 28, 28), lambda: nn.Sequential(nn.Conv2d(1, 3, 5, padding=2, dilation=1), nn.ReLU(),
                                           nn.Flatten(), nn.Linear(3 * 28 * 28, 32), nn.BatchNorm1d(32),
                                           nn.ReLU(), nn.Linear(32, 10))),
    ((1, 4, 7), lambda: nn.Sequential(ToSequence(), nn.Linear(28, 12), nn.ReLU(), nn.Linear(12, 3))),
])
def test_torch_exports_match_onnxruntime(shape, body):
    torch.manual_seed(0)
    module = body()
    for m in module.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    assert_matches_ort(export(module, shape))


def test_affine_chains_are_folded():
    module = nn.Sequential(Normalise(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    net = verifier.load(export(module, (1, 784)))
    kinds = [type(net.op(n)).__name__ for n in net.order]
    assert kinds == ["Affine", "Relu", "Affine"]


def test_unsupported_op_names_node_and_op():
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    with pytest.raises(ModelError) as err:
        verifier.load(export(module, (1, 1, 28, 28)))
    message = str(err.value)
    assert "Sigmoid" in message and "not supported" in message and "node" in message
    assert "\n" not in message


def test_corrupt_file_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelError, match="bad.onnx"):
        verifier.load(bad)


@pytest.mark.parametrize("shape,input_shape", [
    ((28, 28), (1, 28, 28)), ((784,), (1, 28, 28)), ((1, 1, 28, 28), (1, 28, 28)), ((28, 28, 1), (1, 28, 28)),
    ((28, 28), (784, 1)), ((3, 1024), (3, 32, 32)), ((2, 3, 4), (6, 4)), ((1, 1, 5), (5,)),
])
def test_layouts_read_in_the_models_order_are_accepted(shape, input_shape):
    """A sample whose row-major order is the model's (axes of size 1, merged or split
    neighbours) is read as is: its flat values are those of the same sample in the model's shape."""
    from verifier.network.graph import check_layout

    check_layout(shape, input_shape)


@pytest.mark.parametrize("shape,input_shape,needle", [
    ((32, 32, 3), (3, 32, 32), "a transpose of the model's input shape (3, 32, 32)"),
    ((4, 6), (6, 4), "a transpose"),
    ((56, 14), (1, 28, 28), "shape (56, 14) but the model's input shape is (1, 28, 28)"),
    ((5,), (1, 28, 28), "expects 784"),
])
def test_layouts_read_in_another_order_are_refused(shape, input_shape, needle):
    from verifier.network.graph import check_layout

    with pytest.raises(verifier.InputError) as refused:
        check_layout(shape, input_shape)
    assert needle in str(refused.value) and "\n" not in str(refused.value)
