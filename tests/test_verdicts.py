"""Verdict rules: ties are adversarial, a misclassified input is its own counterexample, eps 0
and label handling."""

import numpy as np
import pytest

import verifier
from tests.nets import mlp_onnx, random_mlp
from verifier import Status
from verifier.errors import InputError


def test_ties_count_as_adversarial():
    w = np.array([[1.0, -2.0, 0.5], [1.0, -2.0, 0.5], [-1.0, 0.0, 0.0]])  # logits 0 and 1 always tie
    net = verifier.load(mlp_onnx([w], [np.zeros(3)]))
    x = np.array([0.75, 0.125, 0.5])  # float32-representable: the point itself is evidence
    for label in (0, 1):
        r = verifier.verify(net, x, 0.0, label=label)
        assert r.status == Status.ADVERSARIAL and r.decided_by == "clean"
        assert r.margin_upper == 0.0
        np.testing.assert_array_equal(r.counterexample, x.astype(np.float32))
    # At eps 0 around a point with no float32 twin there is no checkable evidence: not robust.
    r = verifier.verify(net, np.array([0.9, 0.1, 0.5]), 0.0, label=0, timeout=5)
    assert r.status == Status.UNKNOWN and r.margin_lower <= 0 <= r.margin_upper + 1e-12


def test_misclassified_input_is_its_own_counterexample():
    rng = np.random.default_rng(3)
    ws, bs = random_mlp(rng, [5, 8, 4])
    net = verifier.load(mlp_onnx(ws, bs, input_shape=[1, 5]))
    x = rng.uniform(0, 1, 5)
    wrong = (int(np.argmax(net.forward(x))) + 1) % 4
    r = verifier.verify(net, x, 0.05, label=wrong)
    assert r.status == Status.ADVERSARIAL and r.decided_by == "clean"
    assert r.adversarial_label == int(np.argmax(net.forward(x)))
    assert r.prediction != r.label


def test_eps_zero_on_a_correct_input_is_robust():
    rng = np.random.default_rng(4)
    ws, bs = random_mlp(rng, [5, 8, 4])
    net = verifier.load(mlp_onnx(ws, bs))
    x = rng.uniform(0, 1, 5)
    r = verifier.verify(net, x, 0.0)
    assert r.status == Status.ROBUST and r.label == int(np.argmax(net.forward(x)))


@pytest.mark.parametrize("bad", [{"eps": -0.1}, {"eps": float("nan")}, {"label": 7}, {"label": 1.5}])
def test_bad_arguments_raise_input_error(bad):
    rng = np.random.default_rng(5)
    ws, bs = random_mlp(rng, [5, 8, 4])
    net = verifier.load(mlp_onnx(ws, bs))
    args = {"eps": 0.1, "label": None, **bad}
    with pytest.raises(InputError):
        verifier.verify(net, rng.uniform(0, 1, 5), args["eps"], label=args["label"])


def test_input_outside_domain_is_rejected():
    rng = np.random.default_rng(6)
    ws, bs = random_mlp(rng, [5, 8, 4])
    net = verifier.load(mlp_onnx(ws, bs))
    with pytest.raises(InputError, match="outside the domain"):
        verifier.verify(net, np.full(5, 1.5), 0.1)
