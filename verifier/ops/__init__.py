"""Operations of a verified network, one module per op family.

Each op works on *flat* float64 vectors (the batch dimension first in forward passes) and carries
everything the stages need: a forward pass, interval bounds, a vector-Jacobian product (for
attacks) and its MILP encoding. Stages walk the graph and call these methods.
"""

from verifier.ops.affine import Affine
from verifier.ops.relu import Relu

__all__ = ["Affine", "Relu"]
