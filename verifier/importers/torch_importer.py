"""torch.nn.Module -> Network, through an in-memory ONNX export and the one ONNX importer.

One importer, not two: the module is exported with the TorchScript exporter (`dynamo=False`,
which needs no onnxscript), so everything the ONNX importer supports, and its errors, apply;
counterexamples are re-checked by onnxruntime on the exported bytes, as for ONNX files.
"""

from __future__ import annotations

import io
import warnings

from verifier.errors import ModelError, first_line
from verifier.network.graph import Network

#: Opset of the export: 13 has every op the importer reads, in its input-taking form.
EXPORT_OPSET = 13


def is_torch_module(model) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(model, torch.nn.Module)


def load_torch(module, input_shape) -> Network:
    """Export `module` (evaluation mode, float32, batch of one) for inputs of `input_shape`
    (without the batch dimension, e.g. (1, 28, 28)) and import the result."""
    import torch

    from verifier.importers.onnx_importer import load_onnx

    if input_shape is None:
        raise ModelError(f"a torch module ({type(module).__name__}) needs input_shape, e.g. (1, 28, 28)")
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ModelError(f"input_shape must be a tuple of sizes, got {input_shape!r}") from None
    if not shape or min(shape) <= 0:
        raise ModelError(f"input_shape must be a non-empty tuple of positive sizes, got {shape}")
    was_training = module.training
    buffer = io.BytesIO()
    try:
        module.eval()
        dtype = next((p.dtype for p in module.parameters()), torch.float32)
        dummy = torch.zeros((1, *shape), dtype=dtype)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (dummy,), buffer, dynamo=False, opset_version=EXPORT_OPSET,
                              input_names=["input"], output_names=["output"])
    except Exception as e:  # the exporter raises many types; one line for the user
        raise ModelError(f"cannot export torch module {type(module).__name__} with input shape {shape}: "
                         f"{first_line(e)}") from None
    finally:
        module.train(was_training)
    net = load_onnx(buffer.getvalue())
    net.name = type(module).__name__
    return net
