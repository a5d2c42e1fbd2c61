"""Linear maps as torch tensors on a device, for the torch bound engine.

A linear bound is pushed through a layer by two products: forward (x -> W x, for concrete or
interval centres) and backward (lambda -> lambda W, for back-substitution). Each kind keeps its
structure so neither product ever materialises W densely when it is not stored dense: a
convolution runs as conv2d forward and as a transposed convolution backward, a diagonal as a
multiplication, a sparse matrix as sparse CSR products. Built by `LinearMap.to_torch`
(verifier/ops/linear.py), which caches one per device and dtype.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F


class TorchLinear(ABC):
    """The map x -> W x on flat vectors, W of shape (n_out, n_in), as torch tensors.

    Both products accept any number of leading (batch) dimensions and keep them."""

    def __init__(self, n_out: int, n_in: int) -> None:
        self.n_out = n_out
        self.n_in = n_in

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., n_in) -> W x as (..., n_out)."""

    @abstractmethod
    def backward(self, lam: torch.Tensor) -> torch.Tensor:
        """lam (..., n_out) -> lam @ W as (..., n_in)."""


class TorchDense(TorchLinear):
    """A dense matrix: two matmuls."""

    def __init__(self, matrix: np.ndarray, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(*matrix.shape)
        self.weight = torch.as_tensor(matrix, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T

    def backward(self, lam: torch.Tensor) -> torch.Tensor:
        return lam @ self.weight


def _csr_tensor(matrix: sp.csr_matrix, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A torch CSR copy of `matrix` (scipy's arrays are checked already; torch's "beta" notice
    about CSR tensors is not for our users)."""
    matrix = sp.csr_matrix(matrix, copy=True)
    matrix.sort_indices()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(torch.tensor(matrix.indptr, dtype=torch.int64),
                                       torch.tensor(matrix.indices, dtype=torch.int64),
                                       torch.tensor(matrix.data, dtype=dtype), size=matrix.shape,
                                       dtype=dtype, device=device, check_invariants=False)


class TorchSparse(TorchLinear):
    """A sparse matrix kept as W and W^T in CSR, so both products are sparse @ dense with the
    leading dimensions flattened into columns."""

    def __init__(self, matrix: sp.csr_matrix, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(*matrix.shape)
        self.weight = _csr_tensor(matrix, device, dtype)
        self.weight_t = _csr_tensor(sp.csr_matrix(matrix.T), device, dtype)

    @staticmethod
    def _left_product(csr: torch.Tensor, x: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
        lead = x.shape[:-1]
        columns = x.reshape(-1, n_in).T.contiguous()
        return torch.sparse.mm(csr, columns).T.reshape(*lead, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._left_product(self.weight, x, self.n_in, self.n_out)

    def backward(self, lam: torch.Tensor) -> torch.Tensor:
        return self._left_product(self.weight_t, lam, self.n_out, self.n_in)


class TorchDiagonal(TorchLinear):
    """An elementwise scale: one multiplication each way."""

    def __init__(self, scale: np.ndarray, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(scale.size, scale.size)
        self.scale = torch.tensor(scale, dtype=dtype, device=device)  # a copy: scale is read-only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def backward(self, lam: torch.Tensor) -> torch.Tensor:
        return lam * self.scale


class TorchConv(TorchLinear):
    """A 2-D convolution on (C, H, W) images flattened in C order.

    Forward pads explicitly (ONNX pads may be asymmetric, torch's are not) and convolves.
    Backward is the adjoint: the gradient on the padded input, then cropped. In float64 on a
    CPU it is torch's convolution-gradient kernel on the padded shape (`_conv_input_gradient`);
    elsewhere a transposed convolution (as fast as that kernel in float32, and cuDNN's on a
    GPU), short by the bottom/right rows and columns that no window reaches when the stride
    does not divide evenly (those get zeros)."""

    def __init__(self, kernel: np.ndarray, in_shape: tuple[int, int, int], out_shape: tuple[int, int, int],
                 strides: tuple[int, int], pads: tuple[int, int, int, int], dilations: tuple[int, int],
                 group: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(int(np.prod(out_shape)), int(np.prod(in_shape)))
        self.kernel = torch.tensor(kernel, dtype=dtype, device=device)  # a copy: kernel is read-only
        self.in_shape = in_shape
        self.out_shape = out_shape
        self.strides = strides
        self.pads = pads
        self.dilations = dilations
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        top, left, bottom, right = self.pads
        image = x.reshape(-1, *self.in_shape)
        if any(self.pads):
            image = F.pad(image, (left, right, top, bottom))
        out = F.conv2d(image, self.kernel, None, self.strides, 0, self.dilations, self.group)
        return out.reshape(*lead, self.n_out)

    def backward(self, lam: torch.Tensor) -> torch.Tensor:
        lead = lam.shape[:-1]
        top, left, bottom, right = self.pads
        channels, height, width = self.in_shape
        images = lam.reshape(-1, *self.out_shape)
        padded = (images.shape[0], channels, height + top + bottom, width + left + right)
        if images.dtype == torch.float64 and images.device.type == "cpu":
            grad = _conv_input_gradient(images, self.kernel, padded, self.strides, self.dilations, self.group)
        else:
            grad = F.conv_transpose2d(images, self.kernel, None, self.strides, 0, 0, self.group, self.dilations)
            short_h, short_w = padded[2] - grad.shape[-2], padded[3] - grad.shape[-1]
            if short_h or short_w:
                grad = F.pad(grad, (0, short_w, 0, short_h))
        grad = grad[..., top:top + height, left:left + width]
        return grad.reshape(*lead, self.n_in)


def _conv_input_gradient(images: torch.Tensor, kernel: torch.Tensor, padded: tuple, strides, dilations,
                         group: int) -> torch.Tensor:
    """The transposed convolution as the gradient of a convolution on the padded input of
    `padded` shape: the same numbers as conv_transpose2d, but for float64 on a CPU torch's
    gradient kernel is several times faster than its conv_transpose2d (which float64 walks
    through a CIFAR conv spend seconds in; benchmarks/RESULTS.md, "Why the defaults are what
    they are")."""
    shape = torch.Size(padded)
    return torch.ops.aten.convolution_backward(
        images, images.new_empty(1).expand(shape), kernel, None, list(strides), [0, 0], list(dilations), False,
        [0, 0], group, (True, False, False))[0]
