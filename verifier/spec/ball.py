"""Input sets: the L-infinity ball around a sample, intersected with the input domain."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verifier.errors import InputError


@dataclass
class InputBox:
    """lo <= x <= hi, elementwise, on flat inputs."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self) -> None:
        # `+ 0.0` turns -0.0 into 0.0: a property that fixes X_i to "-0.0" and "0.0" is a
        # degenerate dimension, but numpy's samplers read hi - lo = -0.0 as a negative width.
        self.lo = np.asarray(self.lo, dtype=np.float64) + 0.0
        self.hi = np.asarray(self.hi, dtype=np.float64) + 0.0

    def float32_box(self) -> tuple[np.ndarray, np.ndarray]:
        """The largest float32 box inside this one (rounded inward), where counterexamples are
        placed so that the exact values fed to the model are provably in the set."""
        lo32 = self.lo.astype(np.float32)
        hi32 = self.hi.astype(np.float32)
        up = lo32.astype(np.float64) < self.lo
        lo32[up] = np.nextafter(lo32[up], np.float32(np.inf))
        down = hi32.astype(np.float64) > self.hi
        hi32[down] = np.nextafter(hi32[down], np.float32(-np.inf))
        return lo32, hi32  # lo32 > hi32 where no float32 lies in [lo, hi]

    def contains(self, x: np.ndarray) -> bool:
        x = np.asarray(x, dtype=np.float64).ravel()
        return bool(np.all(x >= self.lo) and np.all(x <= self.hi))

    def clip_float32(self, x: np.ndarray) -> np.ndarray:
        lo32, hi32 = self.float32_box()
        return np.clip(np.asarray(x).ravel().astype(np.float32), lo32, hi32)


def linf_ball(x: np.ndarray, eps: float, domain: tuple[float, float] | None = (0.0, 1.0)) -> InputBox:
    """{x' : |x' - x|_inf <= eps} intersected with the domain box."""
    if not np.isfinite(eps) or eps < 0:
        raise InputError(f"eps must be a finite number >= 0, got {eps}")
    lo, hi = x - eps, x + eps
    if domain is not None:
        d_lo, d_hi = domain
        if np.any(x < d_lo) or np.any(x > d_hi):
            bad = int(np.flatnonzero((x < d_lo) | (x > d_hi))[0])
            raise InputError(f"input value x[{bad}] = {x[bad]:g} lies outside the domain [{d_lo:g}, {d_hi:g}]")
        lo, hi = np.maximum(lo, d_lo), np.minimum(hi, d_hi)
    return InputBox(lo, hi)
