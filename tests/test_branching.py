"""The trial rule's choice (bab/branching.py) on a problem whose children's bounds are known:
each rank picks the neuron its definition names, and a neuron that needs no split is never
picked."""

from types import SimpleNamespace

import pytest
import torch

from verifier.bab.branching import choose_by_trial

# Children's bounds per neuron of the one split layer: (inactive side, active side).
CHILDREN = [(-1.0, -1.0), (-3.0, 0.5), (-1.5, -0.2), (5.0, 5.0)]
SCORES = [1.0, 2.0, 3.0, 0.0]  # the last needs no split (stable): score 0


class KnownChildren:
    """A problem whose trial returns CHILDREN's bounds for the rows of each fixed neuron."""

    def split_scores(self, k, mu, lower, upper, alpha):
        return torch.tensor([SCORES] * mu.shape[0], dtype=torch.float64)

    def trial(self, spec_ids, lower, upper, alphas, betas, signs, reps, fixes):
        out = torch.full((len(spec_ids) * reps, 1), float("nan"), dtype=torch.float64)
        for k, rows, neurons, active in fixes:
            for row, neuron in zip(rows.tolist(), neurons.tolist()):
                out[row, 0] = CHILDREN[neuron][int(active)]
        assert not out.isnan().any(), "every trial row is a fixed candidate"
        return out


def _choose(rank: str, candidates: int) -> list:
    batch = 2
    bound = SimpleNamespace(value=torch.zeros(batch), mus=[torch.zeros(batch, 1, len(SCORES))])
    layer = [torch.zeros(batch, len(SCORES))]
    return choose_by_trial(KnownChildren(), torch.zeros(batch, dtype=torch.long), bound, layer, layer, layer,
                           layer, layer, candidates, rank)


@pytest.mark.parametrize("rank, expected", [("weaker", 0), ("stronger", 1)])
def test_each_rank_picks_the_neuron_its_child_names(rank, expected):
    # weaker: the best worse child is neuron 0's -1.0; stronger: the best better child is neuron 1's 0.5.
    assert _choose(rank, candidates=4) == [(0, expected)] * 2


def test_a_stable_neuron_is_never_picked_even_if_its_children_look_best():
    # neuron 3's children (5.0) beat all, but its score is 0: fixing it changes nothing real.
    for rank in ("weaker", "stronger"):
        assert all(choice[1] != 3 for choice in _choose(rank, candidates=4))


def test_the_trial_only_tries_the_best_scored_candidates():
    # with 2 candidates only neurons 2 and 1 (scores 3 and 2) are tried: weaker picks 2 (-1.5 > -3).
    assert _choose("weaker", candidates=2) == [(0, 2)] * 2
    assert _choose("stronger", candidates=2) == [(0, 1)] * 2
