"""Independent re-check of counterexamples: onnxruntime on the original ONNX bytes.

Nothing is reported `adversarial` unless the model, run by onnxruntime on a float32 input that
lies inside the input set, really scores another label at least as high as the true one.
"""

from __future__ import annotations

import numpy as np

from verifier.errors import ModelError, first_line
from verifier.network.graph import Network


def _session(net: Network):
    session = net.cache.get("ort_session")
    if session is None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(net.onnx_bytes, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{net.name}: onnxruntime cannot run this model, so counterexamples "
                             f"cannot be re-checked ({first_line(e)})") from None
        net.cache["ort_session"] = session
    return session


def reference_logits(net: Network, x32: np.ndarray) -> np.ndarray:
    """Logits of the original model for one float32 input (onnxruntime; numpy if no file)."""
    if net.onnx_bytes is None:
        return net.forward(x32.astype(np.float64))
    session = _session(net)
    feed = {session.get_inputs()[0].name: x32.reshape(net.onnx_input_shape).astype(np.float32)}
    return np.asarray(session.run(None, feed)[0], dtype=np.float64).ravel()

