"""The contract every op of a verified network satisfies, in two halves.

`Op` is the op as the importer builds it: plain numpy data over flat float64 vectors, with the
forward pass, interval bounds, back-substitution for the sparse symbolic bounds and the MILP
encoding. `BoundOp` is the same op compiled for the bound engine (`Op.compile`): torch tensors
on one device and dtype, batched over domains, with its linear relaxation. Stages walk the graph
and call these methods; they never ask which op they hold.

Shapes (torch side): B domains, m bound rows per domain, n values of a node (flat, C order):
values (B, n); bounds (B or 1, n); linear-bound coefficients lam (B, m, n).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@dataclass
class Backward:
    """One op's step of the backward walk: lam @ out >= sum_k parts[k] @ in_k + const, valid
    wherever the relaxation's bounds hold. `magnitude` (rigorous walks only) bounds the sum of
    |terms| the step's products round, for the outward slack (walker.py)."""

    parts: list[torch.Tensor]  # (B, m, n_k) coefficients on each input
    const: torch.Tensor | float = 0.0  # (B, m)
    magnitude: torch.Tensor | float = 0.0  # (B, m)


@dataclass
class StepContext:
    """What a backward step may read: its relaxation (from `BoundOp.relax`, None for linear
    ops), its optimisable parameters, and the extents max|value| of its inputs (rigorous walks)."""

    relaxation: Any = None
    alpha: torch.Tensor | None = None  # (B or 1, m, n) slopes in [0, 1]
    beta: torch.Tensor | None = None  # (B, m, n) split multipliers >= 0
    sign: torch.Tensor | None = None  # (B, 1, n): -1 split active, +1 split inactive, 0 free
    extents: list[torch.Tensor] = field(default_factory=list)  # (B or 1, n_k) per input
    rigorous: bool = False


@runtime_checkable
class BoundOp(Protocol):
    """An op compiled onto a device and dtype (see module docstring for shapes).

    - forward: the op on a batch of values.
    - interval: bounds of the output from bounds of the inputs; outward-rounded in float64.
    - relax(bounds): the parts of its linear relaxation fixed by its inputs' bounds (None for
      linear ops); computed once per batch of domains and reused by every step.
    - uncertain(lo, hi): for relaxed ops (`RelaxedBoundOp`), the mask of input entries (n,), or
      per domain (B, n) from bounds (B, n), whose tighter bounds could tighten the relaxation
      (what layer-bound tightening spends its rows on).
    - backward(lam, ctx): the relaxation applied to coefficients on its output. For every
      parameter in its set (slopes in [0, 1], multipliers >= 0) the result is a valid bound.
    - linear: whether the op is affine (exact both ways; no relaxation, no bounds needed).
    - splittable: whether branch and bound may split it (then it is a `SplittableBoundOp`).
    - cost: multiply-adds of one backward step per bound row (for time estimates).
    """

    linear: bool
    splittable: bool
    cost: float

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor: ...

    def interval(self, bounds: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def relax(self, bounds: list[tuple[torch.Tensor, torch.Tensor]]) -> Any: ...

    def backward(self, lam: torch.Tensor, ctx: StepContext) -> Backward: ...


@runtime_checkable
class RelaxedBoundOp(BoundOp, Protocol):
    """A bound op that is not linear (`linear` False): `relax` returns an `OpRelaxation`, and
    `uncertain` says which input entries are worth tighter bounds."""

    def uncertain(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class OpRelaxation(Protocol):
    """What a relaxed op's `relax` returns: tensors batched over domains (B or 1 first).
    `repeated(reps)` gives each domain's relaxation `reps` times in a row, as copies a search may
    change (the children of a split start from their parent's)."""

    def repeated(self, reps: int) -> "OpRelaxation": ...


@runtime_checkable
class SplittableRelaxation(OpRelaxation, Protocol):
    """The relaxation of an op branch and bound splits.

    - default_slope: CROWN's lower slopes (B or 1, 1, n), where alpha-CROWN starts.
    - fix(rows, neurons, active): in place, domains `rows` get entry `neurons` fixed to one side
      of its split, as `relax` would give on bounds that put it there.
    """

    @property
    def default_slope(self) -> torch.Tensor: ...

    def fix(self, rows: torch.Tensor, neurons: torch.Tensor, active: bool) -> None: ...


@runtime_checkable
class SplittableBoundOp(RelaxedBoundOp, Protocol):
    """A bound op branch and bound splits (`splittable` True), each input entry at one point
    (ReLU: at 0) into two sides; signs (B, n) say per domain: -1 the upper side (input >= 0),
    +1 the lower side (input <= 0), 0 not split.

    - clamp(lower, upper, signs): input bounds (B, n) with split entries clamped to their side.
    - split_scores(mu, lower, upper, alpha): (B, n) estimated gain of splitting each entry (mu:
      the entries' coefficients (B, m, n) in the bound); 0 where a split cannot gain.
    - relax returns a `SplittableRelaxation`.
    """

    def clamp(self, lower: torch.Tensor, upper: torch.Tensor,
              signs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def split_scores(self, mu: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                     alpha: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Op(Protocol):
    """An op of the Network (numpy, flat float64 vectors, batch first)."""

    inputs: list[str]

    def forward(self, xs: list[np.ndarray]) -> np.ndarray: ...

    def interval(self, bounds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]: ...

    def vjp(self, grad: np.ndarray, xs: list[np.ndarray]) -> list[np.ndarray]: ...

    def backward_lower(self, lam, bounds): ...

    def encode(self, builder, handles, own_bounds, input_bounds, node: str = ""): ...

    def compile(self, device: torch.device, dtype: torch.dtype, sizes: list[int]) -> BoundOp:
        """The op in the bound engine; `sizes` are its inputs' flat sizes."""
