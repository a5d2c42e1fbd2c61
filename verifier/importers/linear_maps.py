"""Flat-vector matrices of the linear ONNX ops (C order, batch dimension included in shapes).

Each function returns the sparse matrix M with flat(op(x)) = M @ flat(x), built by index
arithmetic (never by probing the op with basis vectors). Convolutions and elementwise scales are
not here: they stay structured as ConvMap and DiagonalMap (verifier/ops/linear.py), whose
matrices verifier/ops/conv_matrix.py builds.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def permutation(shape: tuple[int, ...], perm: tuple[int, ...]) -> sp.csr_matrix:
    """Matrix of Transpose(perm) on a tensor of `shape`."""
    n = int(np.prod(shape))
    source = np.arange(n).reshape(shape).transpose(perm).ravel()
    return sp.csr_matrix((np.ones(n), (np.arange(n), source)), shape=(n, n))


def right_matmul(x_shape: tuple[int, ...], w: np.ndarray) -> sp.csr_matrix:
    """Matrix of x @ w, x of shape (..., k) and w of shape (k, n)."""
    rows = int(np.prod(x_shape[:-1])) if len(x_shape) > 1 else 1
    return sp.kron(sp.identity(rows, format="csr"), sp.csr_matrix(w.T), format="csr")


def left_matmul(w: np.ndarray, x_shape: tuple[int, ...]) -> sp.csr_matrix:
    """Matrix of w @ x, w of shape (m, k) and x of shape (..., k, n) or (k,)."""
    if len(x_shape) == 1:
        return sp.csr_matrix(w)
    batch = int(np.prod(x_shape[:-2])) if len(x_shape) > 2 else 1
    inner = sp.kron(sp.csr_matrix(w), sp.identity(x_shape[-1], format="csr"), format="csr")
    return sp.kron(sp.identity(batch, format="csr"), inner, format="csr")


def pool_windows(in_shape: tuple[int, int, int], kernel, strides, pads, dilations,
                 ceil_mode: bool) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """The windows of a 2-D pooling on a (C, H, W) tensor.

    Returns (windows, in_padded, (C, OH, OW)): windows[j, k] is the flat input index of the
    k-th window position of output j, or -1 where that position lies in the padding;
    in_padded[j, k] tells whether the position lies inside the padded input (ceil_mode windows
    may hang past it, which no pooling counts). pads are ONNX-ordered (top, left, bottom, right).
    """
    channels, height, width = in_shape
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations

    def out_size(size, k, s, begin, end, d):
        span = size + begin + end - d * (k - 1) - 1
        n = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (n - 1) * s >= size + begin:  # the last window must start inside
            n -= 1
        return n

    oh = out_size(height, kh, sh, pads[0], pads[2], dh)
    ow = out_size(width, kw, sw, pads[1], pads[3], dw)
    iy = np.arange(oh)[:, None] * sh - pads[0] + np.arange(kh)[None, :] * dh  # (OH, KH)
    ix = np.arange(ow)[:, None] * sw - pads[1] + np.arange(kw)[None, :] * dw  # (OW, KW)
    y_ok = (iy >= 0) & (iy < height)
    x_ok = (ix >= 0) & (ix < width)
    y_pad = iy < height + pads[2]
    x_pad = ix < width + pads[3]
    c = np.arange(channels)[:, None, None, None, None]
    index = (c * height + iy[None, :, None, :, None]) * width + ix[None, None, :, None, :]
    valid = y_ok[None, :, None, :, None] & x_ok[None, None, :, None, :]
    padded = y_pad[None, :, None, :, None] & x_pad[None, None, :, None, :]
    shape = (channels, oh, ow, kh, kw)
    windows = np.where(np.broadcast_to(valid, shape), np.broadcast_to(index, shape), -1)
    in_padded = np.broadcast_to(padded, shape)
    return (windows.reshape(channels * oh * ow, kh * kw), in_padded.reshape(channels * oh * ow, kh * kw),
            (channels, oh, ow))


def average_of_windows(windows: np.ndarray, divisors: np.ndarray, n_in: int) -> sp.csr_matrix:
    """Matrix of y_j = sum of the valid window entries of output j, divided by divisors[j]."""
    rows, slots = np.nonzero(windows >= 0)
    return sp.csr_matrix((1.0 / divisors[rows], (rows, windows[rows, slots])), shape=(windows.shape[0], n_in))


def index_map(source: np.ndarray, n_in: int) -> sp.csr_matrix:
    """Matrix copying input source[j] to output j (rows with source[j] < 0 stay zero)."""
    rows = np.flatnonzero(source >= 0)
    return sp.csr_matrix((np.ones(rows.size), (rows, source[rows])), shape=(source.size, n_in))
