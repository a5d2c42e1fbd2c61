"""An enumeration oracle for tiny piecewise-linear networks written with torch ops.

A test network is a function `f(x, nl)` of a batch of inputs: its linear parts are plain torch
calls (conv2d, linear, avg_pool2d, pad, batch norm, cat, +), its nonlinear parts go through
`nl` (relu, leaky_relu, clip, max_pool). With `nl = TORCH_OPS` it is an ordinary torch
function (exported to ONNX for the verifier). The oracle runs the same function on the n+1
points 0, e_1, ..., e_n: an affine function of x is known exactly from its values there, and
every linear torch op maps those values correctly. Each nonlinearity instead *chooses* one
linear piece per element (ReLU active/inactive, which window entry is the max, ...), adding the
piece's conditions as linear constraints on x; a depth-first search over the choices, pruned by
LP feasibility, visits every region where the network is affine. The minimum of an objective
over the box is the least LP minimum over those regions.

Nothing here shares code with the verifier: no bounds, no big-M, no importer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linprog


class TorchOps:
    """The nonlinearities as torch computes them (for export and forward checks)."""

    relu = staticmethod(torch.relu)

    @staticmethod
    def leaky_relu(t, alpha):
        return F.leaky_relu(t, alpha)

    @staticmethod
    def clip(t, lo, hi):
        return torch.clamp(t, lo, hi)

    @staticmethod
    def max_pool(t, kernel, stride, padding=0):
        return F.max_pool2d(t, kernel, stride, padding)

    @staticmethod
    def global_max_pool(t):
        return F.adaptive_max_pool2d(t, 1)


TORCH_OPS = TorchOps()


class _Branch(Exception):
    def __init__(self, options: list[int]) -> None:
        self.options = options


class _Choices:
    """Piece choices of one evaluation, replaying `prefix` and branching at the first new one."""

    def __init__(self, prefix: list[int], lo: np.ndarray, hi: np.ndarray) -> None:
        self.prefix, self.lo, self.hi = prefix, lo, hi
        self.depth = 0
        self.A: list[np.ndarray] = []  # constraints A x <= b
        self.b: list[float] = []

    def _feasible(self, extra) -> bool:
        A = np.array(self.A + [a for a, _ in extra]) if self.A or extra else np.zeros((0, self.lo.size))
        b = np.array(self.b + [v for _, v in extra])
        if A.shape[0] == 0:
            return True
        res = linprog(np.zeros(self.lo.size), A_ub=A, b_ub=b, bounds=list(zip(self.lo, self.hi)), method="highs")
        return res.status == 0

    def choose(self, pieces: list[list[tuple[np.ndarray, float]]]) -> int:
        """pieces[k] = the constraints (a, b), a @ x <= b, of option k; returns the option taken."""
        if self.depth < len(self.prefix):
            k = self.prefix[self.depth]
        else:
            raise _Branch([k for k, extra in enumerate(pieces) if self._feasible(extra)])
        self.depth += 1
        for a, v in pieces[k]:
            self.A.append(a)
            self.b.append(v)
        return k


def _affine(points: torch.Tensor, index) -> tuple[np.ndarray, float]:
    """(coefficients, constant) of one element, from its values at 0, e_1, ..., e_n."""
    values = points[(slice(None),) + index].detach().numpy()
    return values[1:] - values[0], float(values[0])


class _EnumOps:
    """The nonlinearities as piece choices on point tensors (batch = the n+1 points)."""

    def __init__(self, choices: _Choices) -> None:
        self.c = choices

    def _elementwise(self, t: torch.Tensor, make_pieces) -> torch.Tensor:
        out = t.clone()
        for index in np.ndindex(*t.shape[1:]):
            a, c = _affine(t, index)
            pieces, values = make_pieces(a, c, t[(slice(None),) + index])
            out[(slice(None),) + index] = values[self.c.choose(pieces)]
        return out

    def relu(self, t):
        # active: a x + c >= 0; inactive: a x + c <= 0
        return self._elementwise(t, lambda a, c, v: ([[(-a, c)], [(a, -c)]], [v, torch.zeros_like(v)]))

    def leaky_relu(self, t, alpha):
        return self._elementwise(t, lambda a, c, v: ([[(-a, c)], [(a, -c)]], [v, alpha * v]))

    def clip(self, t, lo, hi):
        if lo is not None and hi is not None and lo > hi:  # torch: hi everywhere
            return self._elementwise(t, lambda a, c, v: ([[]], [torch.full_like(v, hi)]))

        def pieces(a, c, v):
            options, values = [], []
            if lo is not None:  # below: a x + c <= lo
                options.append([(a, lo - c)])
                values.append(torch.full_like(v, lo))
            inside = ([(-a, c - lo)] if lo is not None else []) + ([(a, hi - c)] if hi is not None else [])
            options.append(inside)
            values.append(v)
            if hi is not None:  # above: a x + c >= hi
                options.append([(-a, c - hi)])
                values.append(torch.full_like(v, hi))
            return options, values
        return self._elementwise(t, pieces)

    def global_max_pool(self, t):
        return self.max_pool(t, (t.shape[2], t.shape[3]), 1)

    def max_pool(self, t, kernel, stride, padding=0):
        """Windows by explicit loops (padding positions are never candidates)."""
        _, channels, height, width = t.shape
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        oh = (height + 2 * padding - kh) // stride + 1
        ow = (width + 2 * padding - kw) // stride + 1
        out = torch.zeros((t.shape[0], channels, oh, ow), dtype=t.dtype)
        for ch in range(channels):
            for i in range(oh):
                for j in range(ow):
                    cells = [(ch, y, x) for y in range(i * stride - padding, i * stride - padding + kh)
                             for x in range(j * stride - padding, j * stride - padding + kw)
                             if 0 <= y < height and 0 <= x < width]
                    forms = [_affine(t, cell) for cell in cells]
                    pieces = [[(ak - aw, cw - ck) for (ak, ck) in forms] for (aw, cw) in forms]
                    k = self.c.choose(pieces)  # winner w: x_k - x_w <= 0 for every k
                    out[:, ch, i, j] = t[(slice(None),) + cells[k]]
        return out


def enumerate_min(f, input_shape: tuple[int, ...], lo: np.ndarray, hi: np.ndarray,
                  rows: np.ndarray) -> float:
    """min over x in [lo, hi] (flat) and over rows r of r @ f(x): exact, by enumeration."""
    return float(enumerate_row_minima(f, input_shape, lo, hi, rows).min())


def enumerate_row_minima(f, input_shape: tuple[int, ...], lo: np.ndarray, hi: np.ndarray,
                         rows: np.ndarray) -> np.ndarray:
    """Per row r, min over x in [lo, hi] (flat) of r @ f(x): exact, by one enumeration of the
    activation patterns for all rows."""
    rows = np.atleast_2d(rows)
    n = lo.size
    points = torch.zeros((n + 1, n), dtype=torch.float64)
    points[1:] = torch.eye(n, dtype=torch.float64)
    points = points.reshape((n + 1, *input_shape))
    best = np.full(rows.shape[0], np.inf)
    stack: list[list[int]] = [[]]
    while stack:
        prefix = stack.pop()
        choices = _Choices(prefix, lo, hi)
        try:
            with torch.no_grad():
                out = f(points, _EnumOps(choices)).reshape(n + 1, -1)
        except _Branch as branch:
            stack.extend(prefix + [k] for k in branch.options)
            continue
        A = np.array(choices.A) if choices.A else None
        b = np.array(choices.b) if choices.b else None
        for k, r in enumerate(rows):
            value = out.numpy() @ r
            res = linprog(value[1:] - value[0], A_ub=A, b_ub=b, bounds=list(zip(lo, hi)), method="highs")
            if res.status == 0:
                best[k] = min(best[k], res.fun + value[0])
    return best


def min_margin(f, input_shape, lo, hi, label: int, n_out: int) -> float:
    """min over the box of logit[label] - max_j logit[j] (j != label)."""
    rows = []
    for j in range(n_out):
        if j != label:
            r = np.zeros(n_out)
            r[label], r[j] = 1.0, -1.0
            rows.append(r)
    return enumerate_min(f, input_shape, lo, hi, np.array(rows))
