"""The Python API: load a model, verify one sample."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from verifier.errors import InputError
from verifier.importers import load_onnx
from verifier.network.graph import Network
from verifier.options import VerifyOptions
from verifier.result import Result
from verifier.search.verify import verify_box
from verifier.spec.ball import linf_ball


def load(model: str | os.PathLike | bytes | Network) -> Network:
    """An ONNX file (path or bytes) as a Network; a Network is returned as is."""
    if isinstance(model, Network):
        return model
    return load_onnx(model)


def check_label(net: Network, label) -> int:
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise InputError(f"label must be an integer, got {label!r}")
    if not 0 <= int(label) < net.output_size:
        raise InputError(f"label {label} is out of range: the model has {net.output_size} outputs (0..{net.output_size - 1})")
    return int(label)


def verify(net: Network | str | os.PathLike, x: np.ndarray, eps: float, label: int | None = None,
           timeout: float = 60.0, options: VerifyOptions | None = None) -> Result:
    """Is the decision on x the same for every input within L-infinity distance eps (inside the
    input domain, [0, 1] by default)? label None means the network's own prediction on x.

    Returns a Result: `robust` (proven), `adversarial` (with a counterexample shaped like x,
    re-checked by onnxruntime) or `unknown` (with the margin bounds reached in the time).
    """
    net = load(net)
    opts = replace(options or VerifyOptions(), timeout=float(timeout))
    if not np.isfinite(opts.timeout) or opts.timeout <= 0:
        raise InputError(f"timeout must be a positive number of seconds, got {timeout}")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise InputError(f"eps must be a number, got {eps!r}") from None
    shape = np.shape(x)
    flat = net.flatten_input(x)
    box = linf_ball(flat, eps, opts.domain)
    if label is None:
        label = int(np.argmax(net.forward(flat)))
    result = verify_box(net, flat, box, check_label(net, label), opts)
    if result.counterexample is not None:
        result.counterexample = result.counterexample.reshape(shape)
    return result
