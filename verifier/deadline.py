"""Keeping the time limit: a run has one deadline, a `time.perf_counter()` value set when its
region search starts (`run_state.RunState.deadline`), handed down as a float to every stage; a stage
with a budget of its own passes the earlier of the two. These helpers keep work inside it.

Checking the deadline only before each loop iteration is not enough when one iteration costs
seconds: an Adam step through a wide CNN's dense layers with thousands of rows, or the final
float64 pass after the steps, which must run for the steps to count. A stage entered just
before the deadline then overran by its first iteration plus that pass, on a wide CNN by more
than a minute (benchmarks/RESULTS.md, "Why the defaults are what they are"). So a loop starts an
iteration only if it is expected to end before the deadline with the time still `reserve`d for
what must follow (`Pace`); the first iteration, and one-off passes, are estimated from their
matrix products at a rate measured once per process (`product_seconds`). Anything skipped for
time leaves the bounds it would have tightened as they were, which is always sound.
"""

from __future__ import annotations

import time

import torch

#: Estimates of work not yet timed are multiplied by this: the measured rate is a best case
#: (a small matrix product, a quiet machine); passes also do elementwise work and autograd.
SAFETY = 3.0

#: Seconds per nonzero to assemble a sparse model and hand it to HiGHS (`passModel`): the rate
#: measured on a residual CNN's LP, with room for a slower machine (benchmarks/RESULTS.md, "Why
#: the defaults are what they are").
MODEL_SECONDS_PER_NONZERO = 3e-7

_rates: dict = {}  # (dtype, torch threads) -> measured multiply-adds per second


class OutOfTime(Exception):
    """Raised by a stage that cannot return a partial result (a half-built model is no model)
    when the deadline passes; the region search answers `unknown` with the bounds it has."""


def check(deadline: float) -> None:
    """Raise OutOfTime once the deadline has passed."""
    if time.perf_counter() > deadline:
        raise OutOfTime


def since(began: float, device: torch.device) -> float:
    """Seconds from perf_counter() `began` to the end of the work queued on `device` (a GPU
    runs its kernels after the calls return: its clock is read once they are done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began


def fits(deadline: float, seconds: float) -> bool:
    """Whether work expected to take `seconds` ends before the deadline."""
    return time.perf_counter() + seconds <= deadline


def _rate(dtype: torch.dtype) -> float:
    """Multiply-adds per second of a dense product here (measured once per dtype and thread
    count, by a few small products)."""
    key = (dtype, torch.get_num_threads())
    if key not in _rates:
        a, b = torch.ones((128, 512), dtype=dtype), torch.ones((512, 512), dtype=dtype)
        a @ b
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        _rates[key] = 4 * 128 * 512 * 512 / max(time.perf_counter() - start, 1e-9)
    return _rates[key]


def product_seconds(multiply_adds: float, dtype: torch.dtype = torch.float64) -> float:
    """Expected seconds of work dominated by dense products of `multiply_adds` in `dtype`,
    with the SAFETY factor."""
    return SAFETY * float(multiply_adds) / _rate(dtype)


def model_seconds(nonzeros: int) -> float:
    """Expected seconds to hand a model of `nonzeros` matrix entries to HiGHS."""
    return MODEL_SECONDS_PER_NONZERO * float(nonzeros)


def model_fits(deadline: float, nonzeros: int) -> bool:
    """Whether a model of `nonzeros` entries can be handed to a solver before the deadline:
    that is one native call, not cut short once started (seconds on a residual CNN's LP)."""
    return fits(deadline, model_seconds(nonzeros))


def check_model(deadline: float, nonzeros: int) -> None:
    """Raise OutOfTime unless `model_fits`."""
    if not model_fits(deadline, nonzeros):
        raise OutOfTime


class Pace:
    """Paces a loop of like iterations against a deadline: `next()` (called before each
    iteration) is True only if the slowest iteration so far (before any, the estimate `first`)
    plus `reserve` seconds still end before the deadline."""

    def __init__(self, deadline: float, first: float = 0.0, reserve: float = 0.0) -> None:
        self.deadline, self.reserve = deadline, reserve
        self.slowest, self._timed, self._mark = first, False, None

    def next(self) -> bool:
        now = time.perf_counter()
        if self._mark is not None:  # the iteration since the last call
            took = now - self._mark
            self.slowest = max(self.slowest, took) if self._timed else took
            self._timed = True
        self._mark = now
        return now + self.slowest + self.reserve <= self.deadline
