"""Bounds over many input boxes at once (bounds/boxes.py), the pieces the input split stands on:
each box's bound equals that box bounded alone and never exceeds the exact minimum
(enumerated activation patterns); layer bounds contain every sampled pre-activation, packed
outward; a half that starts from its parent's layer bounds is never looser; alpha-optimised
slopes stay below the exact minimum and beat CROWN somewhere. Plus the light Adam against
torch's, and Maximum's per-domain mask against its one-domain form."""

import numpy as np
import torch

from tests.nets import mlp_onnx, random_mlp
from tests.oracles import enumerate_min_slack
import verifier
from verifier.bounds.alpha import LightAdam
from verifier.bounds.boxes import LayerPacking, box_bounds, optimised_box_bounds
from verifier.bounds.graph import compiled
from verifier.bounds.walker import EXACT
from verifier.ops.maximum import MaximumBound

SIZES = [3, 5, 4, 3]


def _net(seed: int):
    ws, bs = random_mlp(np.random.default_rng(300 + seed), SIZES)
    graph = compiled(verifier.load(mlp_onnx(ws, bs)), "cpu", EXACT)
    # the ONNX file holds float32 weights: the oracles use those
    return graph, [w.astype(np.float32).astype(np.float64) for w in ws], [b.astype(np.float32).astype(np.float64) for b in bs]


def _boxes(seed: int, b: int):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-1, 1, (b, SIZES[0]))
    half = rng.uniform(0.01, 0.6, (b, SIZES[0]))
    return torch.as_tensor(centre - half), torch.as_tensor(centre + half)


def _rows(seed: int):
    rng = np.random.default_rng(50 + seed)
    return torch.as_tensor(rng.normal(size=(2, SIZES[-1]))), torch.as_tensor(rng.normal(size=2))


def _exact(ws, bs, lo, hi, row, const) -> float:
    """min over the box of row @ y + const, by enumeration."""
    return enumerate_min_slack(ws, bs, lo.numpy(), hi.numpy(), [(row.numpy()[None, :], -const.numpy()[None])])


def _pre_activations(ws, bs, x: np.ndarray) -> list[np.ndarray]:
    out, h = [], x
    for w, b in zip(ws[:-1], bs[:-1]):
        z = h @ w.T + b
        out.append(z)
        h = np.maximum(z, 0)
    return out


def test_each_box_bound_matches_the_box_alone_and_lies_below_the_exact_minimum():
    for seed in range(2):
        graph, ws, bs = _net(seed)
        lo, hi = _boxes(seed, 6)
        rows, const = _rows(seed)
        batch = box_bounds(graph, lo, hi, rows, const)
        packing = LayerPacking(graph)
        rng = np.random.default_rng(seed)
        for i in range(lo.shape[0]):
            alone = box_bounds(graph, lo[i:i + 1], hi[i:i + 1], rows, const)
            assert torch.allclose(batch.value[i], alone.value[0], rtol=1e-9, atol=1e-12)
            for r in range(rows.shape[0]):
                assert float(batch.value[i, r]) <= _exact(ws, bs, lo[i], hi[i], rows[r], const[r]) + 1e-9
            x = lo[i].numpy() + rng.random((2000, SIZES[0])) * (hi[i] - lo[i]).numpy()
            layers = packing.unpack(batch.layers[i:i + 1])
            for z, (l, h) in zip(_pre_activations(ws, bs, x), layers.values()):
                assert (z >= l.numpy() - 1e-9).all() and (z <= h.numpy() + 1e-9).all()


def test_a_half_that_starts_from_its_parents_layer_bounds_is_never_looser():
    graph, ws, bs = _net(7)
    lo, hi = _boxes(7, 6)
    rows, const = _rows(7)
    parent = box_bounds(graph, lo, hi, rows, const)
    mid = (lo[:, 0] + hi[:, 0]) / 2
    c_lo, c_hi = lo.clone(), hi.clone()
    c_hi[:, 0] = mid
    fresh = box_bounds(graph, c_lo, c_hi, rows, const)
    inherited = box_bounds(graph, c_lo, c_hi, rows, const, prior=parent.layers)
    assert (inherited.value >= fresh.value - 1e-9).all()
    packing = LayerPacking(graph)
    for (pl, ph), (cl, ch) in zip(packing.unpack(parent.layers).values(), packing.unpack(inherited.layers).values()):
        assert (cl >= pl).all() and (ch <= ph).all()
    for i in range(c_lo.shape[0]):
        for r in range(rows.shape[0]):
            assert float(inherited.value[i, r]) <= _exact(ws, bs, c_lo[i], c_hi[i], rows[r], const[r]) + 1e-9


def test_layer_packing_rounds_outward():
    graph, _, _ = _net(0)
    packing = LayerPacking(graph)
    rng = np.random.default_rng(1)
    known = {}
    for p, n in zip(packing.nodes, packing.sizes):
        lo = torch.as_tensor(rng.normal(size=(4, n)) * 10.0 ** rng.integers(-8, 8, size=(4, n)))
        hi = lo + torch.as_tensor(rng.random((4, n)))
        lo[0, 0] = -np.inf
        known[p] = (lo, hi)
    back = packing.unpack(packing.pack(known, 4, torch.device("cpu")))
    for p in packing.nodes:
        (lo, hi), (blo, bhi) = known[p], back[p]
        assert (blo <= lo).all() and (bhi >= hi).all()
        finite = torch.isfinite(lo)
        assert ((lo - blo)[finite] <= lo[finite].abs() * 2 ** -22).all()
        assert ((bhi - hi) <= hi.abs() * 2 ** -22).all()
    assert torch.isinf(packing.unbounded(2, torch.device("cpu"))).all()


def test_optimised_slopes_stay_below_the_exact_minimum_and_beat_crown_somewhere():
    better = 0
    for seed in range(2):
        graph, ws, bs = _net(seed)
        lo, hi = _boxes(100 + seed, 6)
        rows, const = _rows(seed)
        crown = box_bounds(graph, lo, hi, rows, const)
        alpha = optimised_box_bounds(graph, lo, hi, rows, const, crown.layers, LayerPacking(graph), 30)
        better += int((alpha > crown.value + 1e-6).sum())
        for i in range(lo.shape[0]):
            for r in range(rows.shape[0]):
                assert float(alpha[i, r]) <= _exact(ws, bs, lo[i], hi[i], rows[r], const[r]) + 1e-9
    assert better > 0


def test_light_adam_takes_torch_adams_steps():
    torch.manual_seed(0)
    target = torch.randn(7, 5)
    start = torch.randn(7, 5)
    mine, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    light = LightAdam([{"params": [mine], "lr": 0.05}])
    reference = torch.optim.Adam([theirs], lr=0.05)
    for _ in range(25):
        for p, opt in ((mine, light), (theirs, reference)):
            opt.zero_grad()
            ((p - target) ** 4).sum().backward()
            opt.step()
    assert torch.allclose(mine, theirs, atol=1e-6)


def test_maximum_mask_per_domain_equals_the_one_domain_mask():
    groups = torch.tensor([[0, 1, 2], [3, 4, 0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    op = MaximumBound(groups, valid, 5)
    rng = np.random.default_rng(3)
    lo = torch.as_tensor(rng.normal(size=(30, 5)))
    hi = lo + torch.as_tensor(rng.random((30, 5)) * rng.integers(0, 2, (30, 5)))
    batched = op.uncertain(lo, hi)
    assert batched.shape == (30, 5)
    for i in range(30):
        assert torch.equal(batched[i], op.uncertain(lo[i], hi[i]))
    assert batched.any() and not batched.all()
