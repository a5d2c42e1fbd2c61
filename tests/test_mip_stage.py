"""The MIP stage of the graph engine's search (search/region.py `_mip_stage`): on a network with
few unstable ReLUs left after alpha-CROWN, LP-tightened bounds and the MIP under a cutoff get a
share of the time after the probe search. Against the enumeration oracle on small networks
near their decision boundary, where bounds alone decide nothing."""

import numpy as np
import pytest

import verifier
from tests.test_engine import _hard_case, mlp_net
from tests.test_ops import export
from verifier import Status, VerifyOptions
from verifier.spec.ball import InputBox
from verifier.spec.property import Property

#: The graph engine on ReLU splits (these 5-input nets would take the input split), no attack,
#: no probe search: what is decided after alpha-CROWN is the MIP stage's.
ONLY_THE_MIP = dict(engine="graph", split="relu", bab_probe=0.0, mip_stage_share=1.0, attack_restarts=0,
                    attack_steps=0)


@pytest.mark.parametrize("seed", [3, 4, 9, 11, 13])  # robust, robust, adversarial x 3; alpha-CROWN decides none
def test_the_mip_stage_decides_as_enumeration_does(seed):
    """A radius on a grid next to the decision boundary: the MIP stage decides, as enumeration
    says, its bound is below the exact minimum margin, and a counterexample's outputs
    (onnxruntime's) violate the property."""
    f, shape = mlp_net(seed)
    net = verifier.load(export(f, shape))
    lo, hi, label, expected = _hard_case(f, shape, seed)
    prop = Property.robustness(InputBox(lo, hi), label, 3)
    result = verifier.check(net, prop, timeout=60, options=VerifyOptions(**ONLY_THE_MIP))
    assert result.status == (Status.ROBUST if expected > 0 else Status.ADVERSARIAL), (seed, expected)
    assert result.decided_by == "mip" and result.stats["time_mip_stage"] > 0
    assert result.margin_lower <= expected + 1e-6
    if result.status == Status.ADVERSARIAL:
        x = np.asarray(result.counterexample, dtype=np.float64).ravel()
        assert np.all(x >= lo) and np.all(x <= hi)
        assert prop.min_slack(np.asarray(result.counterexample_outputs, dtype=np.float64).ravel()) <= 0


@pytest.mark.parametrize("seed", [4, 13])  # 13: no ReLU unstable after alpha-CROWN (0 <= 0 must not open the stage)
def test_without_the_mip_stage_the_searches_decide_alone(seed):
    """mip_stage_relus=0: no MIP stage; branch and bound reaches the same verdict."""
    f, shape = mlp_net(seed)
    net = verifier.load(export(f, shape))
    lo, hi, label, expected = _hard_case(f, shape, seed)
    prop = Property.robustness(InputBox(lo, hi), label, 3)
    result = verifier.check(net, prop, timeout=60, options=VerifyOptions(**ONLY_THE_MIP, mip_stage_relus=0))
    assert "time_mip_stage" not in result.stats and result.decided_by != "mip"
    assert result.status == (Status.ROBUST if expected > 0 else Status.ADVERSARIAL)


def test_a_network_over_either_gate_gets_no_mip(monkeypatch):
    """The gates: more unstable ReLUs than mip_stage_relus means no stage at all; an encoding
    over MIP_STAGE_NONZEROS means the stage stops after encoding (recording its size) and the
    searches decide, as enumeration says."""
    import verifier.search.region as region

    f, shape = mlp_net(4)
    net = verifier.load(export(f, shape))
    lo, hi, label, expected = _hard_case(f, shape, 4)
    prop = Property.robustness(InputBox(lo, hi), label, 3)
    opened = verifier.check(net, prop, timeout=60, options=VerifyOptions(**ONLY_THE_MIP))
    unstable = opened.stats["unstable_alpha"]
    assert unstable > 1 and opened.decided_by == "mip"
    over = verifier.check(net, prop, timeout=60, options=VerifyOptions(**ONLY_THE_MIP, mip_stage_relus=unstable - 1))
    assert "time_mip_stage" not in over.stats and over.decided_by != "mip"
    assert over.status == (Status.ROBUST if expected > 0 else Status.ADVERSARIAL)
    monkeypatch.setattr(region, "MIP_STAGE_NONZEROS", 1)
    large = verifier.check(net, prop, timeout=60, options=VerifyOptions(**ONLY_THE_MIP))
    assert large.stats["mip_stage_nonzeros"] > 1 and "binaries" not in large.stats
    assert large.decided_by != "mip" and large.status == over.status
