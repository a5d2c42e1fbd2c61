"""Queued domains keep only the entries that can differ between domains (bab/packing.py): the
round trip restores them (parameters to float16 precision) and zeros the rest, and a search's
problem marks exactly the entries unstable at the root for some spec."""

import numpy as np
import torch

from verifier.bab.packing import Packing


def _masks(seed: int, sizes=(7, 1, 12)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g) < 0.4 for n in sizes]


def test_round_trip_keeps_the_free_entries_and_zeros_the_rest():
    for seed in range(5):
        free = _masks(seed)
        packing = Packing(free)
        flat = torch.cat(free)
        assert packing.kept == int(flat.sum()) and packing.total == flat.numel()
        g = torch.Generator().manual_seed(100 + seed)
        b, m = 3, 2
        signs = [torch.randint(-1, 2, (b, f.numel()), generator=g).to(torch.int8) for f in free]
        alphas = [torch.rand((b, m, f.numel()), generator=g) for f in free]
        betas = [3 * torch.rand((b, m, f.numel()), generator=g) for f in free]
        packed_signs, packed_params = packing.signs(signs), packing.params(alphas, betas)
        assert packed_signs.shape == (b, packing.kept) and packed_params.shape == (b, 2, m, packing.kept)
        full_signs = packing.full_signs(packed_signs)
        full_params = packing.full_params(packed_params, torch.float32)
        want_signs = torch.where(flat, torch.cat(signs, -1), torch.zeros((), dtype=torch.int8))
        assert torch.equal(full_signs, want_signs)
        for i, parts in enumerate((alphas, betas)):
            want = torch.where(flat, torch.cat(parts, -1), torch.zeros(()))
            assert torch.allclose(full_params[:, i], want, rtol=1e-3, atol=1e-3)  # float16 keeps ~3 digits
            assert (full_params[:, i][..., ~flat] == 0).all()


def test_no_free_entry_packs_to_empty_rows():
    packing = Packing([torch.zeros(4, dtype=torch.bool)])
    signs = [torch.ones((2, 4), dtype=torch.int8)]
    assert packing.kept == 0 and packing.signs(signs).shape == (2, 0)
    assert torch.equal(packing.full_signs(packing.signs(signs)), torch.zeros((2, 4), dtype=torch.int8))


def test_graph_problem_frees_the_entries_unstable_for_some_spec():
    """Per-spec root bounds (one row per spec): an entry is free when it is unstable under any
    spec's bounds, and only then."""
    import verifier
    from tests.test_engine import mlp_net
    from tests.test_ops import export
    from verifier.bab.graph_problem import GraphTarget, spec_rows
    from verifier.bounds.graph import compiled

    f, shape = mlp_net(3)
    graph = compiled(verifier.load(export(f, shape)), "cpu")
    x_lo, x_hi = -torch.ones(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64)
    boxes = graph.interval(x_lo, x_hi, {})
    target = GraphTarget(graph, graph.output, {i: b for i, b in enumerate(boxes) if b is not None})
    specs = [spec_rows(np.eye(3)[[0]] - np.eye(3)[[j]], np.zeros(1)) for j in (1, 2)]
    pres = [graph.pre(s) for s in target.splits]
    # Entries 0, 3, 6, ... are stable (active) under both specs' bounds, 1, 4, ... under the second's only.
    def stable(lo, keep):
        k = torch.arange(lo.shape[1]) % 3
        return torch.where(torch.isin(k, torch.tensor(keep)), 0.5, lo)
    lower = [torch.cat([stable(boxes[p][0], [0]), stable(boxes[p][0], [0, 1])]) for p in pres]
    upper = [torch.cat([boxes[p][1].clamp(min=1.0)] * 2) for p in pres]
    problem = target.problem(specs, x_lo, x_hi, lower, upper)
    for free, lo, hi in zip(problem.free(), lower, upper):
        assert torch.equal(free, ((lo < 0) & (hi > 0)).any(0))
    assert any(f.any() for f in problem.free()) and not all(f.all() for f in problem.free())
