"""Exact verification of ReLU networks: `robust` with a proof, `adversarial` with a re-checked
counterexample, or `unknown` with the bounds reached.

    import verifier
    net = verifier.load("model.onnx")
    r = verifier.verify(net, x, eps=0.1)
    r.status, r.counterexample, r.margin_lower, r.margin_upper
"""

from verifier.api import check, load, verify
from verifier.batch import BatchResult, certify_dataset
from verifier.distortion import DistortionResult, min_distortion
from verifier.errors import InputError, ModelError, VerifierError
from verifier.network.graph import Network
from verifier.options import VerifyOptions
from verifier.radii import RadiiResult, verify_radii
from verifier.result import Result, Status
from verifier.spec.property import Conjunction, InputRegion, Property

__all__ = ["load", "verify", "verify_radii", "RadiiResult", "check", "min_distortion", "certify_dataset", "BatchResult", "DistortionResult", "Property", "InputRegion", "Conjunction", "Network", "Result", "Status", "VerifyOptions",
           "VerifierError", "ModelError", "InputError"]
