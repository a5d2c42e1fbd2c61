"""The flat-vector matrix of a 2-D convolution, built by index arithmetic.

A `ConvMap` (verifier/ops/linear.py) needs its matrix only where a numpy stage multiplies by
it or a fold takes a matrix product; this module builds that matrix from the kernel and the
geometry, never by probing the convolution with basis vectors.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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
