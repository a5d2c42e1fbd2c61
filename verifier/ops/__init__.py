"""Operations of a verified network, one module per op family.

Each op works on *flat* float64 vectors (the batch dimension first in forward passes) and carries
everything the stages need: a forward pass, interval bounds, a vector-Jacobian product (for
attacks), a linear relaxation for back-substitution and its MILP encoding. Stages walk the graph
and call these methods. Affine maps, ReLU and the maximum of groups are the whole vocabulary:
every supported ONNX op lowers to them exactly (LeakyReLU and Clip through ReLUs). An Affine's
weights are structured linear maps (`verifier.ops.linear`: matrix, diagonal, convolution), so a
torch engine can run a convolution as a convolution.
"""

from verifier.ops.affine import Affine
from verifier.ops.maximum import Maximum
from verifier.ops.relu import Relu

__all__ = ["Affine", "Maximum", "Relu"]
