"""Linear maps x -> W x on flat vectors, kept in the structure they came with.

An `Affine` op holds one `LinearMap` per input. The numpy stages (intervals, symbolic bounds,
MILP encoding) want W as a matrix, and get it from `matrix` (built once, lazily). The torch
bound engine wants products that follow the structure: a convolution must stay a convolution
(forward conv2d, backward transposed convolution) because its matrix can be far larger than
its kernel, and a diagonal must stay a multiplication. So each kind knows its matrix, its
products in numpy, and its torch form (`to_torch`, verifier/ops/linear_torch.py).

Kinds: `MatrixMap` (any matrix: Gemm, MatMul, Transpose, Pad, Concat, pooling), `DiagonalMap`
(elementwise scales: BatchNorm, Mul/Div by constants, identities of Add/Sub), `ConvMap` (2-D
convolution). `compose` folds two maps into one where the result keeps a useful structure.
Maps are immutable: their arrays are not to be changed after construction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch

from verifier.ops.conv_matrix import conv2d, conv_output_size
from verifier.ops.linear_torch import TorchConv, TorchDense, TorchDiagonal, TorchLinear, TorchSparse

Matrix = np.ndarray | sp.csr_matrix

#: Above this fill ratio a sparse matrix is stored dense (faster products).
DENSE_FILL = 0.25


def as_weight(matrix) -> Matrix:
    """`matrix` as float64, dense or CSR, whichever suits its fill ratio."""
    rows, cols = matrix.shape
    nnz = matrix.nnz if sp.issparse(matrix) else np.count_nonzero(matrix)
    if nnz > DENSE_FILL * rows * cols:
        return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix, dtype=np.float64)
    return sp.csr_matrix(matrix, dtype=np.float64)


def matmul_rows(x: np.ndarray, matrix: Matrix) -> np.ndarray:
    """x @ matrix.T for a batch of row vectors x (B, n), with the matrix dense or sparse."""
    if sp.issparse(matrix):
        return np.asarray((matrix @ x.T).T)
    return x @ matrix.T


def _frozen(array, shape=None) -> np.ndarray:
    """A private read-only float64 copy (the maps are immutable)."""
    out = np.array(array, dtype=np.float64)
    if shape is not None:
        out = out.reshape(shape)
    out.flags.writeable = False
    return out


class LinearMap(ABC):
    """x -> W x on flat vectors, W of shape (n_out, n_in)."""

    n_out: int
    n_in: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_out, self.n_in

    @abstractmethod
    def _build_matrix(self) -> Matrix:
        """W stored by the fill rule (`as_weight`)."""

    @cached_property
    def matrix(self) -> Matrix:
        """W as float64: dense if more than DENSE_FILL of it is nonzero, else CSR."""
        return self._build_matrix()

    @cached_property
    def abs_matrix(self) -> Matrix:
        """|W|, stored like `matrix` (interval radii)."""
        m = self.matrix
        return abs(m) if sp.issparse(m) else np.abs(m)

    @property
    def nnz(self) -> int:
        """Entries stored by `matrix` (all of them when it is dense): the cost of its products."""
        m = self.matrix
        return m.nnz if sp.issparse(m) else m.size

    @property
    def cost(self) -> float:
        """Multiply-adds of one product with one row, in its torch form (time estimates)."""
        return float(self.nnz)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """x (B, n_in) -> x @ W.T, (B, n_out)."""
        return matmul_rows(x, self.matrix)

    def apply_t(self, g: np.ndarray) -> np.ndarray:
        """g (B, n_out) -> g @ W, (B, n_in)."""
        m = self.matrix
        return np.asarray((m.T @ g.T).T) if sp.issparse(m) else g @ m

    @abstractmethod
    def abs(self) -> LinearMap:
        """|W| as a map of the same kind."""

    @abstractmethod
    def scaled_rows(self, s: np.ndarray) -> LinearMap | None:
        """diag(s) @ W in the same kind, or None if this kind cannot hold it."""

    @abstractmethod
    def scaled_cols(self, s: np.ndarray) -> LinearMap | None:
        """W @ diag(s) in the same kind, or None if this kind cannot hold it."""

    @abstractmethod
    def _make_torch(self, device: torch.device, dtype: torch.dtype) -> TorchLinear:
        """The torch form (uncached)."""

    def to_torch(self, device: torch.device | str, dtype: torch.dtype) -> TorchLinear:
        """The same map as torch tensors on `device` in `dtype`, built once per pair."""
        device = torch.device(device)
        cache = self.__dict__.setdefault("_torch", {})
        key = (str(device), dtype)
        if key not in cache:
            cache[key] = self._make_torch(device, dtype)
        return cache[key]

    def __getstate__(self) -> dict:
        """Pickles (process pools) carry the numpy data, not tensors on some device."""
        return {k: v for k, v in self.__dict__.items() if k != "_torch"}


class MatrixMap(LinearMap):
    """W given as a matrix, stored dense or CSR by the fill rule."""

    def __init__(self, matrix) -> None:
        self._matrix = as_weight(matrix)
        self.n_out, self.n_in = self._matrix.shape

    def _build_matrix(self) -> Matrix:
        return self._matrix

    def abs(self) -> MatrixMap:
        return MatrixMap(self.abs_matrix)

    def scaled_rows(self, s: np.ndarray) -> MatrixMap:
        s = np.asarray(s, dtype=np.float64).ravel()
        if sp.issparse(self._matrix):
            scaled = sp.csr_matrix(sp.diags(s) @ self._matrix)
            scaled.eliminate_zeros()
            return MatrixMap(scaled)
        return MatrixMap(self._matrix * s[:, None])

    def scaled_cols(self, s: np.ndarray) -> MatrixMap:
        s = np.asarray(s, dtype=np.float64).ravel()
        if sp.issparse(self._matrix):
            scaled = sp.csr_matrix(self._matrix @ sp.diags(s))
            scaled.eliminate_zeros()
            return MatrixMap(scaled)
        return MatrixMap(self._matrix * s[None, :])

    def _make_torch(self, device: torch.device, dtype: torch.dtype) -> TorchLinear:
        if sp.issparse(self._matrix):
            return TorchSparse(self._matrix, device, dtype)
        return TorchDense(self._matrix, device, dtype)


class DiagonalMap(LinearMap):
    """y = scale * x elementwise."""

    def __init__(self, scale) -> None:
        self.scale = _frozen(scale).ravel()
        self.n_out = self.n_in = self.scale.size

    @property
    def cost(self) -> float:
        return float(self.n_out)

    def _build_matrix(self) -> Matrix:
        return as_weight(sp.diags(self.scale, format="csr"))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale

    def apply_t(self, g: np.ndarray) -> np.ndarray:
        return g * self.scale

    def abs(self) -> DiagonalMap:
        return DiagonalMap(np.abs(self.scale))

    def scaled_rows(self, s: np.ndarray) -> DiagonalMap:
        return DiagonalMap(np.asarray(s, dtype=np.float64).ravel() * self.scale)

    def scaled_cols(self, s: np.ndarray) -> DiagonalMap:
        return self.scaled_rows(s)

    def _make_torch(self, device: torch.device, dtype: torch.dtype) -> TorchLinear:
        return TorchDiagonal(self.scale, device, dtype)


def _per_channel(s: np.ndarray, channels: int) -> np.ndarray | None:
    """The one value per channel of s (flat, C order over (channels, ...)), or None if s
    varies within a channel."""
    s = np.asarray(s, dtype=np.float64).reshape(channels, -1)
    return s[:, 0] if np.array_equal(s, np.broadcast_to(s[:, :1], s.shape)) else None


class ConvMap(LinearMap):
    """A 2-D convolution without bias on a (C, H, W) image, with ONNX's parameters.

    kernel: (M, C/group, kh, kw); pads: (top, left, bottom, right)."""

    def __init__(self, kernel, in_shape: tuple[int, int, int], strides: tuple[int, int] = (1, 1),
                 pads: tuple[int, int, int, int] = (0, 0, 0, 0), dilations: tuple[int, int] = (1, 1),
                 group: int = 1) -> None:
        self.kernel = _frozen(kernel)
        self.in_shape = tuple(int(d) for d in in_shape)
        self.strides = tuple(int(d) for d in strides)
        self.pads = tuple(int(d) for d in pads)
        self.dilations = tuple(int(d) for d in dilations)
        self.group = int(group)
        out_channels, group_channels, kh, kw = self.kernel.shape
        channels, height, width = self.in_shape
        if channels != group_channels * self.group or out_channels % self.group:
            raise ValueError(f"kernel {self.kernel.shape} does not fit input {self.in_shape} with group={group}")
        oh = conv_output_size(height, kh, self.strides[0], self.pads[0], self.pads[2], self.dilations[0])
        ow = conv_output_size(width, kw, self.strides[1], self.pads[1], self.pads[3], self.dilations[1])
        if oh <= 0 or ow <= 0:
            raise ValueError(f"kernel {self.kernel.shape} does not fit input {self.in_shape} (output {oh}x{ow})")
        self.out_shape = (out_channels, oh, ow)
        self.n_out = out_channels * oh * ow
        self.n_in = channels * height * width

    @property
    def cost(self) -> float:
        """A convolution's multiply-adds (its matrix is never needed for that)."""
        return float(self.n_out * self.kernel[0].size)

    def _with_kernel(self, kernel: np.ndarray) -> ConvMap:
        return ConvMap(kernel, self.in_shape, self.strides, self.pads, self.dilations, self.group)

    def _build_matrix(self) -> Matrix:
        matrix, _ = conv2d(self.in_shape, self.kernel, self.strides, self.pads, self.dilations, self.group)
        return as_weight(matrix)

    def abs(self) -> ConvMap:
        return self._with_kernel(np.abs(self.kernel))

    def scaled_rows(self, s: np.ndarray) -> ConvMap | None:
        """A scale constant within each output channel (BatchNorm after the conv) scales the
        kernel's output channels."""
        per_out = _per_channel(s, self.out_shape[0])
        if per_out is None:
            return None
        return self._with_kernel(self.kernel * per_out[:, None, None, None])

    def scaled_cols(self, s: np.ndarray) -> ConvMap | None:
        """A scale constant within each input channel (normalisation before the conv) scales
        the kernel's input channels: kernel[m, c] reads channel (m // (M/g)) * (C/g) + c."""
        per_in = _per_channel(s, self.in_shape[0])
        if per_in is None:
            return None
        out_channels, group_channels = self.kernel.shape[:2]
        first = (np.arange(out_channels) // (out_channels // self.group)) * group_channels
        channel = first[:, None] + np.arange(group_channels)[None, :]
        return self._with_kernel(self.kernel * per_in[channel][:, :, None, None])

    def _make_torch(self, device: torch.device, dtype: torch.dtype) -> TorchLinear:
        return TorchConv(self.kernel, self.in_shape, self.out_shape, self.strides, self.pads, self.dilations,
                         self.group, device, dtype)


def compose(outer: LinearMap, inner: LinearMap) -> LinearMap | None:
    """outer ∘ inner (the matrix outer.matrix @ inner.matrix) as one map, or None when that is
    not worth it.

    A diagonal on either side is absorbed by the other map's own kind where it can hold it
    (diagonal into diagonal, a per-channel scale into a convolution's kernel). Otherwise the
    matrix product is kept if it stores no more entries than the two factors together, and,
    where a convolution is involved, only if it is stored dense: a dense layer may absorb a
    convolution, but a convolution must not become an unstructured sparse matrix."""
    if outer.n_in != inner.n_out:
        raise ValueError(f"cannot compose {outer.shape} after {inner.shape}")
    if isinstance(outer, DiagonalMap):
        folded = inner.scaled_rows(outer.scale)
        if folded is not None:
            return folded
    if isinstance(inner, DiagonalMap):
        folded = outer.scaled_cols(inner.scale)
        if folded is not None:
            return folded
    product = outer.matrix @ inner.matrix
    if sp.issparse(product):
        product = sp.csr_matrix(product)
        product.eliminate_zeros()
    stored = product.nnz if sp.issparse(product) else product.size
    if stored > outer.nnz + inner.nnz:
        return None
    result = MatrixMap(product)
    if (isinstance(outer, ConvMap) or isinstance(inner, ConvMap)) and sp.issparse(result.matrix):
        return None
    return result


__all__ = ["DENSE_FILL", "ConvMap", "DiagonalMap", "LinearMap", "MatrixMap", "TorchLinear", "as_weight",
           "compose", "matmul_rows"]
