"""Affine maps on flat vectors: z = sum_k W_k x_k + b.

Every linear ONNX op (Gemm, MatMul, Conv, BatchNorm, normalisation, Transpose, residual Add)
lowers to this one op, so bounds and encodings are written once. Each W_k is a `LinearMap`
(verifier/ops/linear.py) that keeps its structure (convolution, diagonal, matrix) for the torch
engine; the numpy methods here use its matrix (dense or CSR by fill) or its own products.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch

from verifier.encode.builder import Handle, MilpBuilder
from verifier.ops.contract import Backward, StepContext
from verifier.ops.linear import DENSE_FILL, LinearMap, MatrixMap, matmul_rows


@dataclass
class Affine:
    """z = sum_k weights[k] @ x_k + bias, one linear map per input node (raw matrices given
    here, dense or sparse, are wrapped in MatrixMap)."""

    inputs: list[str]
    weights: list[LinearMap]
    bias: np.ndarray
    origin: list[str] = field(default_factory=list)  # ONNX nodes folded into this one

    def __post_init__(self) -> None:
        self.bias = np.asarray(self.bias, dtype=np.float64).ravel()
        self.weights = [w if isinstance(w, LinearMap) else MatrixMap(w) for w in self.weights]
        for w in self.weights:
            if w.n_out != self.bias.size:
                raise ValueError(f"weight rows {w.n_out} != bias size {self.bias.size}")

    @property
    def size(self) -> int:
        return self.bias.size

    def forward(self, xs: list[np.ndarray]) -> np.ndarray:
        out = np.broadcast_to(self.bias, (xs[0].shape[0], self.size)).copy()
        for w, x in zip(self.weights, xs):
            out += w.apply(x)
        return out

    def compile(self, device: torch.device, dtype: torch.dtype, sizes: list[int]) -> "AffineBound":
        return AffineBound(self, device, dtype)

    def vjp(self, grad: np.ndarray, xs: list[np.ndarray]) -> list[np.ndarray]:
        return [w.apply_t(grad) for w in self.weights]

    def backward_lower(self, lam, bounds):
        """Back-substitution: lam @ z = sum_k (lam @ W_k) @ x_k + lam @ b (exact)."""
        parts = []
        for w in self.weights:
            part = lam @ w.matrix
            if sp.issparse(part) and part.nnz > DENSE_FILL * part.shape[0] * part.shape[1]:
                part = part.toarray()
            parts.append(part)
        return parts, np.asarray(lam @ self.bias).ravel()

    def interval(self, bounds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Exact interval image of a box, widened by a rigorous bound on float rounding."""
        centre = self.bias.copy()
        radius = np.zeros(self.size)
        magnitude = np.abs(self.bias)
        fan_in = 0
        for w, (lo, hi) in zip(self.weights, bounds):
            c = (lo + hi) / 2.0
            r = (hi - lo) / 2.0
            centre += w.apply(c[None, :])[0]
            both = matmul_rows(np.stack([r, np.abs(c) + r]), w.abs_matrix)
            radius += both[0]
            magnitude += both[1]
            fan_in += lo.size
        # Dot products of n terms err by at most ~n*u*sum|terms| (Higham's gamma_n).
        slack = (fan_in + 4) * np.finfo(np.float64).eps * magnitude + 1e-300
        return centre - radius - slack, centre + radius + slack

    def encode(self, builder: MilpBuilder, handles: list[Handle], own_bounds, input_bounds,
               node: str = "") -> Handle:
        """No new columns: z = sum_k W_k (E_k x + c_k) + b, substituted as an expression."""
        const = self.bias.copy()
        expr = sp.csr_matrix((self.size, builder.num_cols))
        for w, h in zip(self.weights, handles):
            const += w.apply(h.const[None, :])[0]
            expr = expr + sp.csr_matrix(w.matrix) @ h.widened(builder.num_cols)
        return Handle(sp.csr_matrix(expr), const)


class AffineBound:
    """An affine map in the bound engine (contract.BoundOp): exact in both directions, each
    weight run by its linear map's own torch form (a convolution forward, a transposed
    convolution backward; never a dense copy of a structured map)."""

    linear = True
    splittable = False

    def __init__(self, op: Affine, device: torch.device, dtype: torch.dtype) -> None:
        self.maps = [w.to_torch(device, dtype) for w in op.weights]
        self._abs_sources = op.weights
        self._device, self._dtype = device, dtype
        self.bias = torch.as_tensor(op.bias, dtype=dtype, device=device)
        self.abs_bias = self.bias.abs()
        self.sizes = [w.n_in for w in op.weights]
        self.cost = float(sum(w.cost for w in op.weights))

    @cached_property
    def abs_maps(self) -> list:
        """|W_k| as maps, for interval bounds and the rounding slack (made on first use)."""
        return [w.abs().to_torch(self._device, self._dtype) for w in self._abs_sources]

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = self.bias
        for w, x in zip(self.maps, xs):
            out = out + w.forward(x)
        return out

    def interval(self, bounds):
        """Exact interval image of a box, widened by a rigorous bound on float rounding (as
        Affine.interval)."""
        centre, radius, magnitude = self.bias, 0.0, self.abs_bias
        for w, w_abs, (lo, hi) in zip(self.maps, self.abs_maps, bounds):
            c, r = (lo + hi) / 2, (hi - lo) / 2
            centre = centre + w.forward(c)
            radius = radius + w_abs.forward(r)
            magnitude = magnitude + w_abs.forward(c.abs() + r)
        fan_in = sum(self.sizes)
        slack = (fan_in + 4) * torch.finfo(self.bias.dtype).eps * magnitude + 1e-300
        return centre - radius - slack, centre + radius + slack

    def relax(self, bounds) -> None:
        return None

    def backward(self, lam: torch.Tensor, ctx: StepContext) -> Backward:
        parts = [w.backward(lam) for w in self.maps]
        const = lam @ self.bias
        magnitude = 0.0
        if ctx.rigorous:
            with torch.no_grad():  # lam @ W_k errs by <= gamma |lam| |W_k| entrywise, met by |x_k|
                size = lam.abs()
                magnitude = size @ self.abs_bias
                for w_abs, extent in zip(self.abs_maps, ctx.extents):
                    magnitude = magnitude + (size @ w_abs.forward(extent).unsqueeze(-1)).squeeze(-1)
        return Backward(parts, const, magnitude)
