"""Minimum adversarial distortion in L-infinity, L1, L2 and L0 (see `minimum.min_distortion`)."""

from verifier.distortion.minimum import min_distortion
from verifier.distortion.result import DistortionResult

__all__ = ["min_distortion", "DistortionResult"]
