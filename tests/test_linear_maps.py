"""Structured linear maps (verifier/ops/linear.py) against independent oracles:

- every product (numpy apply / apply_t, torch forward / backward) equals the dense matrix's;
- a convolution's matrix equals probing torch's conv2d, on an image padded by numpy, with
  basis vectors, and its torch path never builds a matrix;
- every composition equals the matrix product, and keeps convolutions structured;
- an exported Conv + BatchNorm network imports as one convolution and computes what
  onnxruntime computes.
"""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

import verifier
from verifier.ops import Affine
from verifier.ops.linear import ConvMap, DiagonalMap, LinearMap, MatrixMap, compose

TOL = 1e-10

#: (in_shape, kernel shape, strides, pads (top, left, bottom, right), dilations, group)
CONVS = {
    "same": ((2, 5, 5), (3, 2, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "stride_drops_last_row": ((2, 6, 7), (4, 2, 3, 2), (2, 2), (0, 1, 0, 0), (1, 1), 1),
    "asymmetric_pads": ((1, 4, 5), (2, 1, 2, 3), (1, 2), (2, 0, 1, 3), (1, 1), 1),
    "groups_dilation": ((4, 6, 7), (4, 2, 2, 3), (3, 2), (1, 0, 0, 2), (2, 1), 2),
    "depthwise_uncovered": ((3, 6, 6), (3, 1, 3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 3),
    "dilated_uncovered_col": ((6, 5, 4), (4, 3, 2, 2), (1, 2), (0, 0, 0, 0), (2, 2), 2),
}


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def conv_map(name: str, seed: int = 0) -> ConvMap:
    in_shape, kshape, strides, pads, dilations, group = CONVS[name]
    kernel = np.random.default_rng(seed).normal(size=kshape)
    return ConvMap(kernel, in_shape, strides, pads, dilations, group)


def conv_oracle(conv: ConvMap, images: np.ndarray) -> np.ndarray:
    """torch's conv2d on images (N, C, H, W) padded by numpy: (N, n_out)."""
    top, left, bottom, right = conv.pads
    padded = np.pad(images, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out = F.conv2d(torch.as_tensor(padded), torch.tensor(conv.kernel), None, conv.strides, 0,
                   conv.dilations, conv.group)
    return out.reshape(images.shape[0], -1).numpy()


def probed_matrix(conv: ConvMap) -> np.ndarray:
    """Column j = the conv of the j-th basis image (the oracle, never used by the code)."""
    basis = np.eye(conv.n_in).reshape(conv.n_in, *conv.in_shape)
    return conv_oracle(conv, basis).T


def maps() -> dict[str, LinearMap]:
    rng = np.random.default_rng(1)
    out = {
        "dense": MatrixMap(rng.normal(size=(7, 5))),
        "sparse": MatrixMap(sp.random(40, 30, density=0.05, random_state=2, format="csr")),
        "diagonal": DiagonalMap(rng.normal(size=9)),
    }
    out.update({f"conv_{name}": conv_map(name, k) for k, name in enumerate(CONVS)})
    return out


MAPS = maps()


def test_kinds_store_their_matrices_by_fill():
    assert sp.issparse(MAPS["sparse"].matrix) and isinstance(MAPS["dense"].matrix, np.ndarray)
    assert sp.issparse(MAPS["diagonal"].matrix)
    assert MAPS["sparse"].nnz == MAPS["sparse"].matrix.nnz and MAPS["dense"].nnz == 35


@pytest.mark.parametrize("name", CONVS)
def test_conv_matrix_equals_probing(name):
    conv = conv_map(name)
    assert dense(conv.matrix).shape == (conv.n_out, conv.n_in) == (int(np.prod(conv.out_shape)), conv.n_in)
    assert np.allclose(dense(conv.matrix), probed_matrix(conv), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", MAPS)
def test_numpy_products_equal_the_matrix(name):
    w = MAPS[name]
    m = dense(w.matrix)
    rng = np.random.default_rng(3)
    x, g = rng.normal(size=(4, w.n_in)), rng.normal(size=(4, w.n_out))
    assert np.allclose(w.apply(x), x @ m.T, atol=TOL, rtol=0)
    assert np.allclose(w.apply_t(g), g @ m, atol=TOL, rtol=0)
    assert np.allclose(dense(w.abs().matrix), np.abs(m), atol=TOL, rtol=0)
    assert np.allclose(dense(w.abs_matrix), np.abs(m), atol=TOL, rtol=0)
    assert type(w.abs()) is type(w)


def _torch_products(w: LinearMap, device: str, dtype: torch.dtype, lead=(2, 3)):
    rng = np.random.default_rng(4)
    x, g = rng.normal(size=(*lead, w.n_in)), rng.normal(size=(*lead, w.n_out))
    t = w.to_torch(device, dtype)
    fwd = t.forward(torch.as_tensor(x, dtype=dtype, device=device)).cpu().double().numpy()
    bwd = t.backward(torch.as_tensor(g, dtype=dtype, device=device)).cpu().double().numpy()
    m = dense(w.matrix)
    return fwd, x @ m.T, bwd, g @ m


@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
@pytest.mark.parametrize("name", MAPS)
def test_torch_products_equal_the_matrix(name, lead):
    fwd, fwd_ref, bwd, bwd_ref = _torch_products(MAPS[name], "cpu", torch.float64, lead)
    assert fwd.shape == fwd_ref.shape and bwd.shape == bwd_ref.shape
    assert np.allclose(fwd, fwd_ref, atol=TOL, rtol=0)
    assert np.allclose(bwd, bwd_ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", MAPS)
def test_torch_float32_is_close_to_float64(name):
    fwd, fwd_ref, bwd, bwd_ref = _torch_products(MAPS[name], "cpu", torch.float32)
    assert np.allclose(fwd, fwd_ref, atol=1e-4, rtol=1e-4)
    assert np.allclose(bwd, bwd_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", MAPS)
def test_torch_products_on_cuda(name, dtype):
    fwd, fwd_ref, bwd, bwd_ref = _torch_products(MAPS[name], "cuda", dtype)
    tol = TOL if dtype == torch.float64 else 1e-4
    assert np.allclose(fwd, fwd_ref, atol=tol, rtol=tol)
    assert np.allclose(bwd, bwd_ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", CONVS)
def test_conv_torch_path_is_conv2d_and_builds_no_matrix(name):
    conv = conv_map(name, seed=5)
    images = np.random.default_rng(6).normal(size=(3, *conv.in_shape))
    t = conv.to_torch("cpu", torch.float64)
    got = t.forward(torch.as_tensor(images.reshape(3, -1))).numpy()
    t.backward(torch.ones(3, conv.n_out, dtype=torch.float64))
    assert "matrix" not in conv.__dict__
    assert np.allclose(got, conv_oracle(conv, images), atol=TOL, rtol=0)


def test_torch_forms_are_cached_and_not_pickled():
    w = conv_map("same")
    assert w.to_torch("cpu", torch.float64) is w.to_torch(torch.device("cpu"), torch.float64)
    assert w.to_torch("cpu", torch.float32) is not w.to_torch("cpu", torch.float64)
    copy = pickle.loads(pickle.dumps(w))
    assert "_torch" not in copy.__dict__ and np.array_equal(dense(copy.matrix), dense(w.matrix))


# ---- compose ------------------------------------------------------------------------------

def _per_channel(values: np.ndarray, spatial: int) -> np.ndarray:
    return np.repeat(values, spatial)


def _assert_product(result: LinearMap, outer: LinearMap, inner: LinearMap) -> None:
    expected = dense(outer.matrix) @ dense(inner.matrix)
    assert np.allclose(dense(result.matrix), expected, atol=TOL, rtol=0)


def test_diagonal_after_diagonal_is_diagonal():
    rng = np.random.default_rng(7)
    a, b = DiagonalMap(rng.normal(size=6)), DiagonalMap(rng.normal(size=6))
    result = compose(a, b)
    assert isinstance(result, DiagonalMap)
    _assert_product(result, a, b)


@pytest.mark.parametrize("name", CONVS)
def test_batchnorm_after_conv_stays_conv(name):
    conv = conv_map(name)
    channels, oh, ow = conv.out_shape
    bn = DiagonalMap(_per_channel(np.random.default_rng(8).normal(size=channels), oh * ow))
    result = compose(bn, conv)
    assert isinstance(result, ConvMap)
    _assert_product(result, bn, conv)


@pytest.mark.parametrize("name", CONVS)
def test_conv_after_normalisation_stays_conv(name):
    conv = conv_map(name)
    channels, height, width = conv.in_shape
    norm = DiagonalMap(_per_channel(np.random.default_rng(9).normal(size=channels), height * width))
    result = compose(conv, norm)
    assert isinstance(result, ConvMap)
    _assert_product(result, conv, norm)


def test_conv_never_becomes_an_unstructured_sparse_matrix():
    conv = ConvMap(np.random.default_rng(10).normal(size=(4, 2, 3, 3)), (2, 12, 12), pads=(1, 1, 1, 1))
    second = ConvMap(np.random.default_rng(10).normal(size=(2, 4, 3, 3)), conv.out_shape)
    assert compose(second, conv) is None
    varying = DiagonalMap(np.random.default_rng(11).normal(size=conv.n_out))  # not per channel
    assert compose(varying, conv) is None


def test_dense_layer_absorbs_a_conv():
    conv = conv_map("same")  # more outputs than inputs: the product is smaller than the factors
    gemm = MatrixMap(np.random.default_rng(12).normal(size=(3, conv.n_out)))
    result = compose(gemm, conv)
    assert isinstance(result, MatrixMap) and isinstance(result.matrix, np.ndarray)
    _assert_product(result, gemm, conv)


def test_matrix_products_follow_the_nnz_rule():
    rng = np.random.default_rng(13)
    dense_a, dense_b = MatrixMap(rng.normal(size=(4, 6))), MatrixMap(rng.normal(size=(6, 5)))
    _assert_product(compose(dense_a, dense_b), dense_a, dense_b)
    diag = DiagonalMap(rng.normal(size=6))
    for result, outer, inner in [(compose(dense_a, diag), dense_a, diag), (compose(diag, dense_b), diag, dense_b)]:
        assert isinstance(result, MatrixMap)
        _assert_product(result, outer, inner)
    spread = MatrixMap(sp.random(200, 200, density=0.02, random_state=3, format="csr"))
    assert compose(spread, spread) is None  # the product stores more than both factors together


# ---- Affine and the importer ----------------------------------------------------------------

def test_affine_wraps_raw_matrices():
    op = Affine(["x"], [np.eye(3), sp.identity(3, format="csr")], np.zeros(3))
    assert all(isinstance(w, MatrixMap) for w in op.weights)
    with pytest.raises(ValueError):
        Affine(["x"], [DiagonalMap(np.ones(4))], np.zeros(3))


class ConvBnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 3 * 3, 4)
        with torch.no_grad():
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.normal_()
            self.bn.bias.normal_()

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_conv_batchnorm_imports_as_one_conv_matching_onnxruntime():
    module = ConvBnNet().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # no constant folding: the exporter would otherwise fold the BatchNorm itself
        torch.onnx.export(module, torch.zeros(1, 2, 5, 5), buf, dynamo=False, do_constant_folding=False,
                          input_names=["input"], output_names=["logits"])
    data = buf.getvalue()
    assert "BatchNormalization" in [n.op_type for n in onnx.load_from_string(data).graph.node]
    net = verifier.load(data)
    first = net.op(net.order[0])
    assert isinstance(first, Affine) and isinstance(first.weights[0], ConvMap)
    assert any("BatchNorm" in o for o in first.origin) and len(first.origin) == 2
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for x in np.random.default_rng(14).uniform(-1, 1, (5, 1, 2, 5, 5)).astype(np.float32):
        expected = session.run(None, {"input": x})[0].ravel()
        got = net.forward(x.astype(np.float64).ravel())
        assert np.allclose(got, expected, atol=1e-5, rtol=1e-5)
