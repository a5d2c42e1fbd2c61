"""Op contracts (verifier/ops/contract.py), op by op, for every op class in verifier/ops/:

- every op class, bound-op class, relaxation class and linear-map kind is enumerated from the
  package and must be covered here (a new one fails `test_every_op_kind_is_covered`);
- each op (direct instances of every family, and every op of the importer's test networks)
  satisfies the `Op` and `BoundOp` Protocols, member by member with their signatures;
- numpy side, as the interval / symbolic / MILP stages use it: `interval` contains sampled
  values, `backward_lower` gives a linear lower bound below lam @ op(x) at every sample (and
  its minimum over the box below the sampled minimum; exact for affine ops), `vjp` equals
  finite differences;
- torch side: `forward` equals the numpy op, `interval` contains samples, `backward` is a valid
  lower bound for random slopes and, on split domains, random multipliers; `clamp` + `relax`
  equals `fix`, `uncertain` marks every entry whose bounds can change the relaxation,
  `repeated` repeats domains as copies;
- MILP: for small networks of every family, the HiGHS optimum of a random row over a node
  equals the forward pass at its argmin (every node's MILP value equals it), lies below every
  sampled value, equals the enumeration oracle (tests/pwl_oracle.py) and onnxruntime at x*.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import typing

import networkx as nx
import numpy as np
import onnxruntime as ort
import pytest
import scipy.sparse as sp
import torch

import verifier
import verifier.ops
from solvers.base import EXACT_FEASIBILITY, SolveOptions, SolveStatus
from solvers.highs import HighsSolver
from tests.nets import mlp_onnx, random_mlp
from tests.oracles import enumerate_min_slack
from tests.pwl_oracle import enumerate_min
from tests.test_ops import NETS, export
from verifier.bounds.interval import interval_bounds
from verifier.bounds.symbolic import symbolic_bounds
from verifier.encode.network import encode_network
from verifier.network.graph import Network
from verifier.ops import Affine, Maximum, Relu
from verifier.ops.contract import (Backward, BoundOp, Op, OpRelaxation, RelaxedBoundOp, SplittableBoundOp,
                                   SplittableRelaxation, StepContext)
from verifier.ops.linear import ConvMap, DiagonalMap, LinearMap, MatrixMap

CPU = torch.device("cpu")
F64 = torch.float64
#: Slack for float rounding in checks of bounds against sampled values (relative + absolute).
SLACK = 1e-9


# ----------------------------------------------------------------------------------------------
# What exists: enumerated from the package, so a new op class or map kind fails until covered.

def _package_classes() -> list[type]:
    found = []
    for info in pkgutil.iter_modules(verifier.ops.__path__):
        module = importlib.import_module(f"verifier.ops.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and not getattr(cls, "_is_protocol", False):
                found.append(cls)
    return found


def op_classes() -> set[type]:
    """Classes of verified-network ops: a forward pass, an MILP encoding and a compiled form."""
    needs = ("forward", "encode", "compile")
    return {c for c in _package_classes() if all(callable(getattr(c, m, None)) for m in needs)}


def bound_op_classes() -> set[type]:
    return {c for c in _package_classes() if all(callable(getattr(c, m, None)) for m in ("backward", "relax"))}


def relaxation_classes() -> set[type]:
    return {c for c in _package_classes() if callable(getattr(c, "repeated", None))}


def map_classes() -> set[type]:
    out, todo = set(), [LinearMap]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            if not inspect.isabstract(sub):
                out.add(sub)
    return out


# ----------------------------------------------------------------------------------------------
# Direct instances of every family, with input boxes that hit the edge cases (points, bounds
# at exactly 0, dominated and tied max candidates).

def _boxes(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    lo = rng.normal(size=n)
    hi = lo + rng.exponential(size=n)
    pick = rng.permutation(n)
    k = max(1, n // 6)
    hi[pick[:k]] = lo[pick[:k]]  # points
    lo[pick[k:2 * k]] = 0.0  # active, at the kink
    hi[pick[k:2 * k]] = rng.exponential(size=k)
    hi[pick[2 * k:3 * k]] = 0.0  # inactive, at the kink
    lo[pick[2 * k:3 * k]] = np.minimum(lo[pick[2 * k:3 * k]], -0.1)
    return lo, hi


def _sparse(rng, shape, density) -> sp.csr_matrix:
    return sp.random(*shape, density=density, random_state=np.random.RandomState(int(rng.integers(1 << 30))),
                     data_rvs=lambda k: rng.normal(size=k), format="csr")


def _maximum_case(rng):
    """Overlapping groups, -1 padding, a singleton, a dominated candidate, tied point candidates."""
    groups = np.array([[0, 1, 2, 3], [2, 3, 4, -1], [5, -1, -1, -1], [6, 7, 8, -1], [9, 10, -1, -1],
                       [0, 4, 8, 11]])
    lo, hi = _boxes(rng, 12)
    lo[6], hi[6] = 3.0, 3.5  # dominates 7 and 8 below
    lo[7], hi[7] = -1.0, 2.0
    lo[8], hi[8] = 2.5, 3.0  # touches the leader's lower bound: ruled out
    lo[9] = hi[9] = lo[10] = hi[10] = 0.75  # tied points
    return Maximum(["a"], groups), [(lo, hi)]


def _affine_case(kind: str, rng):
    if kind == "dense":
        w = MatrixMap(rng.normal(size=(5, 7)))
        n_in = [7]
    elif kind == "csr":
        w = MatrixMap(_sparse(rng, (9, 12), 0.12))
        n_in = [12]
    elif kind == "diagonal":
        scale = rng.normal(size=6)
        scale[2] = 0.0
        w = DiagonalMap(scale)
        n_in = [6]
    elif kind == "conv_dense":
        w = ConvMap(rng.normal(size=(2, 1, 2, 2)), (1, 3, 3), pads=(1, 0, 0, 1))
        n_in = [9]
    elif kind == "conv_sparse":
        w = ConvMap(rng.normal(size=(3, 2, 2, 2)), (2, 6, 6), strides=(2, 2), group=1)
        n_in = [72]
    else:
        raise KeyError(kind)
    bias = rng.normal(size=w.n_out)
    return Affine([f"in{k}" for k in range(len(n_in))], [w], bias), [_boxes(rng, n) for n in n_in]


def _affine_inputs_case(rng):
    """Three inputs (a residual Add plus a concat-like block): conv, diagonal and a raw array."""
    conv = ConvMap(rng.normal(size=(2, 1, 3, 3)), (1, 4, 4), pads=(1, 1, 1, 1))  # (2, 4, 4)
    diag = DiagonalMap(rng.normal(size=32))
    raw = rng.normal(size=(32, 3))
    op = Affine(["a", "b", "c"], [conv, diag, raw], rng.normal(size=32))
    return op, [_boxes(rng, 16), _boxes(rng, 32), _boxes(rng, 3)]


INSTANCES = {
    "affine_dense": functools.partial(_affine_case, "dense"),
    "affine_csr": functools.partial(_affine_case, "csr"),
    "affine_diagonal": functools.partial(_affine_case, "diagonal"),
    "affine_conv_dense": functools.partial(_affine_case, "conv_dense"),
    "affine_conv_sparse": functools.partial(_affine_case, "conv_sparse"),
    "affine_three_inputs": _affine_inputs_case,
    "relu": lambda rng: (Relu(["a"]), [_boxes(rng, 24)]),
    "maximum": _maximum_case,
}


def instance(name: str, seed: int = 0):
    return INSTANCES[name](np.random.default_rng(seed))


def _box_samples(bounds, count: int, seed: int) -> list[np.ndarray]:
    """Per input: `count` uniform points of its box and `count` of its corners."""
    rng = np.random.default_rng(seed)
    out = []
    for lo, hi in bounds:
        u = lo + (hi - lo) * rng.uniform(size=(count, lo.size))
        corners = np.where(rng.uniform(size=(count, lo.size)) < 0.5, lo, hi)
        out.append(np.vstack([u, corners]))
    return out


# ----------------------------------------------------------------------------------------------
# Small networks: the importer's (tests/test_ops.py, an MLP) and one built from ops directly.

def synthetic_net(seed: int) -> Network:
    """input (1, 6, 6) -> strided conv (sparse ConvMap) -> ReLU -> max over overlapping, padded
    and singleton groups; a sparse skip from the input; a three-input Affine (diagonal, raw
    matrix) -> ReLU -> a two-input output layer."""
    rng = np.random.default_rng(seed)
    conv = ConvMap(np.float32(rng.normal(size=(2, 1, 2, 2))).astype(float), (1, 6, 6), strides=(2, 2))
    groups = [[c * 9 + r * 3 + q + d for d in (0, 1, 3, 4)] for c in range(2) for r in range(2) for q in range(2)]
    groups += [[1, 10, -1, -1], [13, -1, -1, -1]]
    ops = {
        "conv": Affine(["x"], [conv], rng.normal(size=18) * 0.3),
        "relu1": Relu(["conv"]),
        "max": Maximum(["relu1"], np.array(groups)),
        "skip": Affine(["x"], [MatrixMap(_sparse(rng, (10, 36), 0.1))], rng.normal(size=10) * 0.3),
        "add": Affine(["max", "skip", "x"], [DiagonalMap(rng.normal(size=10)), np.eye(10),
                                             rng.normal(size=(10, 36)) * 0.1], rng.normal(size=10) * 0.3),
        "relu2": Relu(["add"]),
        "out": Affine(["relu2", "max"], [rng.normal(size=(3, 10)), rng.normal(size=(3, 10))], rng.normal(size=3)),
    }
    graph = nx.DiGraph()
    graph.add_node("x")
    for name, op in ops.items():
        graph.add_node(name, op=op)
        for src in op.inputs:
            graph.add_edge(src, name)
    return Network(graph, "x", (1, 6, 6), "out")


MLP_SIZES = [4, 6, 5, 3]
NET_NAMES = sorted(NETS) + ["mlp", "synthetic"]


@functools.lru_cache(maxsize=None)
def load(name: str):
    """(network, ONNX bytes or None, exact minimum of rows @ output over a box or None)."""
    if name == "synthetic":
        return synthetic_net(4), None, None
    if name == "mlp":
        ws, bs = random_mlp(np.random.default_rng(8), MLP_SIZES)
        data = mlp_onnx(ws, bs)

        def oracle(lo, hi, row):
            return enumerate_min_slack(ws, bs, lo, hi, [(row[None], np.zeros(1))])
        return verifier.load(data), data, oracle
    f, shape = NETS[name](6)
    data = export(f, shape)
    return verifier.load(data), data, lambda lo, hi, row: enumerate_min(f, shape, lo, hi, row[None])


def _net_box(net: Network, seed: int, eps: float):
    """An L-inf ball around a point of [0.2, 0.8]^n: within [0, 1] for eps < 0.2, else not
    clipped (wide enough that every test network has unstable ReLUs and open max groups)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, net.input_size)
    return x - eps, x + eps


def _net_samples(lo, hi, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([lo + (hi - lo) * rng.uniform(size=(count, lo.size)),
                      np.where(rng.uniform(size=(count, lo.size)) < 0.5, lo, hi)])


def net_op_cases(name: str):
    """Every op of the network with its input bounds (interval, then symbolic: tighter, so more
    stable ReLUs and decided max groups) and input values: the network's at sampled inputs plus
    points sampled in the op's own input boxes."""
    net = load(name)[0]
    for eps in (0.1, 1.0):
        lo, hi = _net_box(net, 1, eps)
        values = net.forward_all(_net_samples(lo, hi, 150, 2))
        intervals = interval_bounds(net, lo, hi)
        yield from _op_cases(net, f"eps={eps}:interval", intervals, values)
        yield from _op_cases(net, f"eps={eps}:symbolic", symbolic_bounds(net, intervals), values)


def _op_cases(net, kind, bounds, values):
    for node in net.order:
        op = net.op(node)
        in_bounds = [bounds[i] for i in op.inputs]
        box = _box_samples(in_bounds, 100, 3)
        xs = [np.vstack([values[i], b]) for i, b in zip(op.inputs, box)]
        yield f"{kind}:{node}", op, in_bounds, xs


# ----------------------------------------------------------------------------------------------
# The checks, one op at a time.

def _protocol_members(proto) -> dict[str, object]:
    """Members a Protocol declares (its own and its Protocol bases'), name -> declaration."""
    members = {}
    for base in reversed(proto.__mro__):
        if base in (object, typing.Protocol, typing.Generic) or not getattr(base, "_is_protocol", False):
            continue
        members.update({k: None for k in getattr(base, "__annotations__", {})})
        members.update({k: v for k, v in vars(base).items() if not k.startswith("_")})
    return members


def check_protocol(obj, proto) -> None:
    """isinstance (runtime_checkable: presence) plus every declared method's signature."""
    assert isinstance(obj, proto), f"{type(obj).__name__} is not a {proto.__name__}"
    for name, decl in _protocol_members(proto).items():
        assert hasattr(obj, name), f"{type(obj).__name__} lacks {name}"
        if inspect.isfunction(decl):
            impl = getattr(obj, name)
            assert callable(impl), f"{type(obj).__name__}.{name} is not callable"
            want = list(inspect.signature(decl).parameters)[1:]
            have = list(inspect.signature(impl).parameters)
            assert have == want, f"{type(obj).__name__}.{name}{tuple(have)} != {proto.__name__}.{name}{tuple(want)}"


def _row_values(ys: np.ndarray, lam) -> np.ndarray:
    """(S, m): every row of lam (dense or sparse, (m, n)) on every sample of ys (S, n)."""
    return np.asarray(lam @ ys.T).T if sp.issparse(lam) else ys @ lam.T


def _tol(values: np.ndarray) -> np.ndarray:
    return SLACK * (1.0 + np.abs(values))


def check_numpy_op(op, bounds, xs, seed: int) -> None:
    """The numpy op's contract on input boxes `bounds` and samples `xs` inside them."""
    rng = np.random.default_rng(seed)
    assert len(op.inputs) == len(bounds) == len(xs)
    ys = op.forward(xs)
    n_out = ys.shape[1]
    lo, hi = op.interval(bounds)
    assert lo.shape == hi.shape == (n_out,)
    assert np.all(lo <= hi)
    assert np.all(ys >= lo) and np.all(ys <= hi), "interval misses a sampled value"

    lam = rng.normal(size=(5, n_out))
    lam[:, rng.uniform(size=n_out) < 0.2] = 0.0
    lam[0] = np.abs(lam[0])  # one all-positive and one all-negative row
    lam[1] = -np.abs(lam[1])
    exact = _row_values(ys, lam)
    results = []
    for coeffs in (lam, sp.csr_matrix(lam)):
        parts, const = op.backward_lower(coeffs, bounds)
        const = np.asarray(const, dtype=np.float64).ravel()
        assert len(parts) == len(xs) and const.shape == (lam.shape[0],)
        for p, x in zip(parts, xs):
            assert p.shape == (lam.shape[0], x.shape[1])
        parts = [p.toarray() if sp.issparse(p) else np.asarray(p) for p in parts]
        linear = const + sum(x @ p.T for p, x in zip(parts, xs))
        assert np.all(linear <= exact + _tol(exact)), "backward_lower is above lam @ op(x) at a sample"
        over_box = const + sum(p @ ((b_lo + b_hi) / 2) - np.abs(p) @ ((b_hi - b_lo) / 2)
                               for p, (b_lo, b_hi) in zip(parts, bounds))
        sampled_min = exact.min(axis=0)
        assert np.all(over_box <= sampled_min + _tol(sampled_min)), "backward_lower's box minimum above the sampled one"
        if isinstance(op, Affine):  # back-substitution through an affine map is exact
            np.testing.assert_allclose(linear, exact, rtol=1e-9, atol=1e-9)
        results.append((parts, const))
    for a, b in zip(results[0][0] + [results[0][1]], results[1][0] + [results[1][1]]):  # dense lam == sparse lam
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

    # vjp against central differences at points inside the boxes, along directions the boxes
    # allow (none along a point's zero width), where the op is affine around the point
    points = [lo + (hi - lo) * rng.uniform(size=(200, lo.size)) for lo, hi in bounds]
    dirs = [rng.normal(size=p.shape) * (hi > lo) for p, (lo, hi) in zip(points, bounds)]
    h = 1e-6
    centre = op.forward(points)
    plus = op.forward([p + h * d for p, d in zip(points, dirs)])
    minus = op.forward([p - h * d for p, d in zip(points, dirs)])
    smooth = np.all(np.abs(plus + minus - 2 * centre) <= 1e-9 * (1 + np.abs(centre)), axis=1)
    assert smooth.mean() > 0.5
    g = rng.normal(size=centre.shape)
    grads = op.vjp(g, points)
    assert len(grads) == len(points)
    analytic = sum((gk * d).sum(axis=1) for gk, d in zip(grads, dirs))
    numeric = ((plus - minus) * g).sum(axis=1) / (2 * h)
    np.testing.assert_allclose(analytic[smooth], numeric[smooth], rtol=1e-5, atol=1e-5)


def _T(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=F64)


def _linear_value(back: Backward, xs) -> np.ndarray:
    """(S, m): the bound of a backward step (domain 0) at every sample."""
    const = back.const[0].numpy() if torch.is_tensor(back.const) else back.const
    return const + sum(x @ p[0].numpy().T for p, x in zip(back.parts, xs))


def _tensors(relaxation) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vars(relaxation).items() if torch.is_tensor(v)}


def _same_relaxation(a, b) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert ta[k].dtype == tb[k].dtype, k
        if ta[k].is_floating_point():
            torch.testing.assert_close(ta[k].expand_as(tb[k]), tb[k], rtol=1e-12, atol=1e-12, msg=k)
        else:
            assert torch.equal(ta[k].expand_as(tb[k]), tb[k]), k


def check_bound_op(op, bounds, xs, seed: int) -> bool:
    """The compiled op's contract; True if a split was checked (splittable ops with an
    uncertain entry)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [x.shape[1] for x in xs]
    bop = op.compile(CPU, F64, sizes)
    check_protocol(bop, BoundOp)
    assert isinstance(bop.linear, bool) and isinstance(bop.splittable, bool)
    assert float(bop.cost) >= 0
    ys = op.forward(xs)
    np.testing.assert_allclose(bop.forward([_T(x) for x in xs]).numpy(), ys, rtol=1e-12, atol=1e-12)
    tb = [(_T(lo)[None], _T(hi)[None]) for lo, hi in bounds]
    t_lo, t_hi = bop.interval(tb)
    assert t_lo.shape == t_hi.shape == (1, ys.shape[1])
    assert np.all(ys >= t_lo.numpy()) and np.all(ys <= t_hi.numpy()), "compiled interval misses a sampled value"

    relaxation = bop.relax(tb)
    if bop.linear:
        assert relaxation is None and not bop.splittable
    else:
        check_protocol(bop, RelaxedBoundOp)
        check_protocol(relaxation, OpRelaxation)
    if bop.splittable:
        check_protocol(bop, SplittableBoundOp)
        check_protocol(relaxation, SplittableRelaxation)
        slope = relaxation.default_slope
        assert slope.shape == (1, 1, sizes[0]) and bool(((slope >= 0) & (slope <= 1)).all())

    m = 6
    lam = torch.randn((1, m, ys.shape[1]), generator=g, dtype=F64)
    exact = ys @ lam[0].numpy().T
    alphas = [None] + ([torch.rand((1, m, sizes[0]), generator=g, dtype=F64)] if bop.splittable else [])
    for alpha in alphas:
        back = bop.backward(lam, StepContext(relaxation=relaxation, alpha=alpha))
        assert len(back.parts) == len(xs)
        for p, n in zip(back.parts, sizes):
            assert p.shape == (1, m, n)
        linear = _linear_value(back, xs)
        assert np.all(linear <= exact + _tol(exact)), f"backward (alpha {alpha is not None}) above lam @ op(x)"
        extents = [torch.maximum(lo.abs(), hi.abs()) for lo, hi in tb]
        rigorous = bop.backward(lam, StepContext(relaxation=relaxation, alpha=alpha, extents=extents, rigorous=True))
        for p, q in zip(back.parts, rigorous.parts):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
        magnitude = torch.as_tensor(rigorous.magnitude, dtype=F64)
        assert bool(torch.isfinite(magnitude).all()) and bool((magnitude >= 0).all())
    if bop.linear:
        np.testing.assert_allclose(_linear_value(bop.backward(lam, StepContext()), xs), exact, rtol=1e-9, atol=1e-9)
        return False

    # uncertain: shrinking the bounds of entries it leaves out never changes the relaxation
    assert len(xs) == 1, "relaxed ops with several inputs need their own checks here"
    (lo, hi), = tb
    mask = bop.uncertain(lo[0], hi[0])
    assert mask.shape == (sizes[0],) and mask.dtype == torch.bool
    keep = ~mask
    u, v = torch.rand(lo.shape, generator=g, dtype=F64), torch.rand(lo.shape, generator=g, dtype=F64)
    new_lo = torch.where(keep, lo + u * (hi - lo), lo)
    new_hi = torch.where(keep, new_lo + v * (hi - new_lo), hi)
    _same_relaxation(relaxation, bop.relax([(new_lo, new_hi)]))

    # repeated: each domain `reps` times in a row
    two = bop.relax([(torch.cat([lo, new_lo]), torch.cat([hi, new_hi]))])
    reps = two.repeated(3)
    for k, t in _tensors(two).items():
        r = _tensors(reps)[k]
        assert torch.equal(r, t.repeat_interleave(3, 0) if t.shape[0] == 2 else t), k
    if not bop.splittable:
        return False
    before = {k: t.clone() for k, t in _tensors(two).items()}
    neurons = torch.arange(sizes[0])
    reps.fix(torch.zeros_like(neurons), neurons, True)
    for k, t in _tensors(two).items():  # the copies are the search's to change
        assert torch.equal(t, before[k]), k
    return check_split(bop, relaxation, lo, hi, mask, lam, g)


def check_split(bop, relaxation, lo, hi, unstable, lam, g) -> bool:
    """Random splits of the uncertain entries: clamp + relax equals fix, split scores are 0 where
    no split can gain, and the backward step with multipliers >= 0 bounds every point of the
    split domain."""
    n = lo.shape[1]
    if not bool(unstable.any()):
        return False
    signs = torch.where(unstable, torch.randint(-1, 2, (n,), generator=g), 0).to(F64)[None]
    signs[0, torch.nonzero(unstable).ravel()[0]] = -1.0  # at least one split
    c_lo, c_hi = bop.clamp(lo, hi, signs)
    assert bool((c_lo >= lo).all() and (c_hi <= hi).all() and (c_lo <= c_hi).all())
    assert bool((c_lo[signs < 0] >= 0).all() and (c_hi[signs > 0] <= 0).all())
    assert torch.equal(c_lo[signs == 0], lo[signs == 0]) and torch.equal(c_hi[signs == 0], hi[signs == 0])
    direct = bop.relax([(c_lo, c_hi)])
    before = {k: t.clone() for k, t in _tensors(relaxation).items()}
    fixed = relaxation.repeated(1)
    for side, active in ((-1, True), (1, False)):
        neurons = torch.nonzero(signs[0] == side).ravel()
        fixed.fix(torch.zeros_like(neurons), neurons, active)
    _same_relaxation(fixed, direct)
    for k, t in _tensors(relaxation).items():  # fix changed a copy, not the original
        assert torch.equal(t, before[k]), k

    alpha = torch.rand((1, lam.shape[1], n), generator=g, dtype=F64)
    scores = bop.split_scores(lam, lo, hi, alpha)
    assert scores.shape == (1, n) and bool((scores >= 0).all())
    assert bool((scores[0][~unstable] == 0).all())

    rng = np.random.default_rng(int(torch.randint(1 << 30, (1,), generator=g)))
    xs = _box_samples([(c_lo[0].numpy(), c_hi[0].numpy())], 300, int(rng.integers(1 << 30)))
    ys = bop.forward([_T(xs[0])]).numpy()
    exact = ys @ lam[0].numpy().T
    beta = torch.rand(lam.shape[:2] + (n,), generator=g, dtype=F64) * 3
    for a in (None, alpha):
        back = bop.backward(lam, StepContext(relaxation=direct, alpha=a, beta=beta, sign=signs[:, None, :]))
        linear = _linear_value(back, xs)
        assert np.all(linear <= exact + _tol(exact)), "backward with split multipliers above lam @ op(x)"
    return True


# ----------------------------------------------------------------------------------------------
# Tests.

def test_every_op_kind_is_covered():
    """Every op class, bound op, relaxation and linear-map kind in verifier/ops/ has a direct
    instance here (maps: dense and sparse storage where the kind can have both), and the
    importer's networks use every op class and no other."""
    ops = [instance(name)[0] for name in INSTANCES]
    assert op_classes() == {type(op) for op in ops}
    compiled = [op.compile(CPU, F64, [lo.size for lo, _ in bounds]) for op, bounds in map(instance, INSTANCES)]
    assert bound_op_classes() == {type(b) for b in compiled}
    relaxed = {type(b.relax([(_T(lo)[None], _T(hi)[None]) for lo, hi in bounds]))
               for b, (_, bounds) in zip(compiled, map(instance, INSTANCES)) if not b.linear}
    assert relaxation_classes() == relaxed
    storage = {(type(w), sp.issparse(w.matrix)) for op in ops if isinstance(op, Affine) for w in op.weights}
    assert {cls for cls, _ in storage} == map_classes()
    assert {(MatrixMap, True), (MatrixMap, False), (ConvMap, True), (ConvMap, False)} <= storage
    imported = {type(load(name)[0].op(n)) for name in NET_NAMES if name != "synthetic" for n in load(name)[0].order}
    assert imported == op_classes()


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_direct_instances_satisfy_the_protocols(name):
    op, bounds = instance(name)
    check_protocol(op, Op)
    check_protocol(op.compile(CPU, F64, [lo.size for lo, _ in bounds]), BoundOp)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_direct_instances_keep_the_contract(name, seed):
    op, bounds = instance(name, seed)
    xs = _box_samples(bounds, 300, seed + 10)
    check_numpy_op(op, bounds, xs, seed)
    split = check_bound_op(op, bounds, xs, seed)
    assert split == isinstance(op, Relu)  # the ReLU boxes have unstable entries to split


@pytest.mark.parametrize("name", NET_NAMES)
def test_every_op_of_the_networks_keeps_the_contract(name):
    """The ops as the importer builds them, with the bounds the stages give them."""
    cases = list(net_op_cases(name))
    assert cases
    splits = 0
    for k, (label, op, bounds, xs) in enumerate(cases):
        check_protocol(op, Op)
        try:
            check_numpy_op(op, bounds, xs, k)
            splits += check_bound_op(op, bounds, xs, k)
        except AssertionError as e:
            raise AssertionError(f"{name} {label} ({type(op).__name__}): {e}") from e
    if any(isinstance(op, Relu) for _, op, _, _ in cases):
        assert splits > 0  # the wide boxes leave unstable ReLUs to split


def _objective_nodes(net: Network) -> list[str]:
    """The output and every node a nonlinear op writes (their MILP columns)."""
    return [net.output_node] + [n for n in net.order if not isinstance(net.op(n), Affine) and n != net.output_node]


#: (eps, bounds): wide boxes with interval bounds (every network gets binaries), the same with
#: symbolic bounds, and narrow boxes with symbolic bounds (stable ReLUs, decided max groups).
BOXES = {"wide": (1.0, "interval"), "wide_symbolic": (1.0, "symbolic"), "narrow_symbolic": (0.1, "symbolic")}


@pytest.mark.parametrize("box", sorted(BOXES))
@pytest.mark.parametrize("name", NET_NAMES)
def test_milp_optimum_is_the_forward_pass_at_its_argmin(name, box):
    """Minimise a random row over the output, and over every ReLU / max node: the optimum is
    the row at the forward pass of the MILP's input x* (and so is every node's MILP value), below
    every sampled value; for the output also onnxruntime's at x* and the enumeration oracle."""
    net, data, oracle = load(name)
    eps, kind = BOXES[box]
    lo, hi = _net_box(net, 5, eps)
    bounds = interval_bounds(net, lo, hi)
    if kind == "symbolic":
        bounds = symbolic_bounds(net, bounds)
    enc = encode_network(net, bounds)
    if box == "wide":
        assert enc.num_binaries > 0
        if any(isinstance(net.op(n), Maximum) for n in net.order):
            assert enc.max_binaries
    solver = HighsSolver(enc.problem)
    samples = _net_samples(lo, hi, 1500, 6)
    sampled = net.forward_all(samples)
    rng = np.random.default_rng(7)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"]) if data is not None else None
    for node in _objective_nodes(net):
        row = rng.normal(size=sampled[node].shape[1])
        c, offset = enc.linear_objective(node, row)
        solver.set_objective(c)
        res = solver.solve(SolveOptions(time_limit=30, feasibility_tol=EXACT_FEASIBILITY))
        assert res.status == SolveStatus.OPTIMAL, (node, res.status)
        value = res.objective + offset
        assert res.dual_bound + offset == pytest.approx(value, rel=1e-6, abs=1e-6)
        x = res.x[enc.input_cols]
        assert np.all(x >= lo - 1e-9) and np.all(x <= hi + 1e-9)
        x = np.clip(x, lo, hi)
        forward = net.forward_all(x[None])
        assert value == pytest.approx(float(forward[node][0] @ row), rel=1e-6, abs=1e-6), node
        for other, h in enc.handles.items():  # every node's MILP value is the forward pass at x*
            milp = h.widened(enc.problem.num_cols) @ res.x + h.const
            np.testing.assert_allclose(milp, forward[other][0], rtol=1e-6, atol=1e-6, err_msg=f"{node}: {other}")
        assert value <= (sampled[node] @ row).min() + 1e-6
        if node != net.output_node:
            continue
        if session is not None:
            feed = x.astype(np.float32).reshape(session.get_inputs()[0].shape)
            out = session.run(None, {session.get_inputs()[0].name: feed})[0].ravel().astype(np.float64)
            assert value == pytest.approx(float(out @ row), rel=1e-5, abs=1e-5)
        if oracle is not None and box != "wide_symbolic":
            assert value == pytest.approx(oracle(lo, hi, row), abs=1e-6)
