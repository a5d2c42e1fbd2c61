"""Flat-vector matrices of the linear ONNX ops (C order, batch dimension included in shapes).

Each function returns the sparse matrix M with flat(op(x)) = M @ flat(x), built by index
arithmetic (never by probing the op with basis vectors).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def permutation(shape: tuple[int, ...], perm: tuple[int, ...]) -> sp.csr_matrix:
    """Matrix of Transpose(perm) on a tensor of `shape`."""
    n = int(np.prod(shape))
    source = np.arange(n).reshape(shape).transpose(perm).ravel()
    return sp.csr_matrix((np.ones(n), (np.arange(n), source)), shape=(n, n))


def diagonal(values: np.ndarray) -> sp.csr_matrix:
    return sp.diags(np.asarray(values, dtype=np.float64).ravel(), format="csr")


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


def conv_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                     dilation: int) -> int:
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def conv2d(in_shape: tuple[int, int, int], weight: np.ndarray, strides, pads, dilations,
           group: int) -> tuple[sp.csr_matrix, tuple[int, int, int]]:
    """Matrix of a 2-D convolution (no bias) on a (C, H, W) tensor; returns it and (M, OH, OW).

    pads are ONNX-ordered: (top, left, bottom, right).
    """
    channels, height, width = in_shape
    out_channels, group_channels, kh, kw = weight.shape
    sh, sw = strides
    dh, dw = dilations
    oh = conv_output_size(height, kh, sh, pads[0], pads[2], dh)
    ow = conv_output_size(width, kw, sw, pads[1], pads[3], dw)
    per_group_out = out_channels // group
    m = np.arange(out_channels)[:, None, None, None]  # (M,1,1,1)
    c_local = np.arange(group_channels)[None, :, None, None]  # (1,Cg,1,1)
    c = (m // per_group_out) * group_channels + c_local  # input channel
    oy = np.arange(oh)[None, None, :, None]
    ox = np.arange(ow)[None, None, None, :]
    rows_all, cols_all, vals_all = [], [], []
    for ki in range(kh):
        iy = oy * sh - pads[0] + ki * dh
        for kj in range(kw):
            ix = ox * sw - pads[1] + kj * dw
            shape = (out_channels, group_channels, oh, ow)
            valid = np.broadcast_to((iy >= 0) & (iy < height) & (ix >= 0) & (ix < width), shape)
            rows = np.broadcast_to((m * oh + oy) * ow + ox, shape)
            cols = np.broadcast_to((c * height + iy) * width + ix, shape)
            vals = np.broadcast_to(weight[:, :, ki, kj][:, :, None, None], shape)
            keep = valid & (vals != 0)
            rows_all.append(rows[keep])
            cols_all.append(cols[keep])
            vals_all.append(vals[keep])
    matrix = sp.csr_matrix(
        (np.concatenate(vals_all), (np.concatenate(rows_all), np.concatenate(cols_all))),
        shape=(out_channels * oh * ow, channels * height * width))
    return matrix, (out_channels, oh, ow)


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
