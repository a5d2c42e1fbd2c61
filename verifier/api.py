"""The Python API: load a model, verify one sample, check a property."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np

from verifier.errors import InputError
from verifier.importers import load_onnx
from verifier.importers.torch_importer import is_torch_module, load_torch
from verifier.network.graph import Network
from verifier.options import VerifyOptions
from verifier.result import Result, Status
from verifier.search.region import check_region
from verifier.spec.ball import linf_ball
from verifier.spec.property import Property


def load(model, input_shape: tuple[int, ...] | None = None, *, mean=None, std=None) -> Network:
    """An ONNX file (path or bytes) or a torch.nn.Module as a Network; a Network is returned as
    is. A module needs `input_shape` (without the batch dimension, e.g. (1, 28, 28)): it is
    exported to ONNX in memory and read by the same importer. `mean`/`std` (one value or one per
    channel, axis 1): the model expects `(x - mean) / std`; the network returned takes pixels,
    so eps, the domain and counterexamples are in pixel units (importers/normalisation.py)."""
    if mean is not None or std is not None:
        from verifier.importers.normalisation import load_normalised

        return load_normalised(model, input_shape, mean, std)
    if isinstance(model, Network):
        return model
    if is_torch_module(model):
        return load_torch(model, input_shape)
    return load_onnx(model)


def check_label(net: Network, label) -> int:
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise InputError(f"label must be an integer, got {label!r}")
    if not 0 <= int(label) < net.output_size:
        raise InputError(f"label {label} is out of range: the model has {net.output_size} outputs (0..{net.output_size - 1})")
    return int(label)


def _options(options: VerifyOptions | None, timeout: float | None, solver: str | None = None) -> VerifyOptions:
    """The run's options; `timeout` and `solver` (if given) override the options' own (an
    unknown or missing solver is an InputError, raised by VerifyOptions)."""
    opts = options or VerifyOptions()
    if solver is not None:
        opts = replace(opts, solver=solver)
    value = timeout if timeout is not None else opts.timeout
    try:
        opts = replace(opts, timeout=float(value))
    except (TypeError, ValueError):
        raise InputError(f"timeout must be a positive number of seconds, got {value!r}") from None
    if not np.isfinite(opts.timeout) or opts.timeout <= 0:
        raise InputError(f"timeout must be a positive number of seconds, got {opts.timeout}")
    return opts


def _spent(opts: VerifyOptions, began: float) -> VerifyOptions:
    """The options with the time since `began` (loading a model given as a file) taken off
    the timeout, which covers the whole call."""
    return replace(opts, timeout=max(opts.timeout - (time.perf_counter() - began), 1e-3))


def verify(net: Network | str | os.PathLike, x: np.ndarray, eps: float, label: int | None = None,
           timeout: float | None = None, options: VerifyOptions | None = None, solver: str | None = None) -> Result:
    """Is the decision on x the same for every input within L-infinity distance eps (inside the
    input domain, [0, 1] by default)? label None means the network's own prediction on x.
    solver: the MIP solver ("highs", "cbc", ...; solvers.SOLVERS), overriding options.solver.

    Returns a Result: `robust` (proven), `adversarial` (with a counterexample shaped like x,
    re-checked by onnxruntime) or `unknown` (with the margin bounds reached in the time).
    A torch module is read for inputs shaped like x.
    """
    began = time.perf_counter()
    net = load(net, np.shape(x))
    opts = _spent(_options(options, timeout, solver), began)
    if isinstance(eps, (list, tuple)) or np.ndim(eps) > 0 or (isinstance(eps, str) and "," in eps):
        raise InputError(f"eps must be one number, got {eps!r}; for several radii use verifier.verify_radii")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise InputError(f"eps must be a number, got {eps!r}") from None
    shape = np.shape(x)
    flat = net.flatten_input(x)
    box = linf_ball(flat, eps, opts.domain)
    if label is None:
        label = int(np.argmax(net.forward(flat)))
    prop = Property.robustness(box, check_label(net, label), net.output_size)
    result = check_region(net, prop.regions[0], flat, opts, label=prop.label)
    if result.counterexample is not None:
        result.counterexample = result.counterexample.reshape(shape)
    return result


def check(net: Network | str | os.PathLike, prop: Property, timeout: float | None = None,
          options: VerifyOptions | None = None, solver: str | None = None) -> Result:
    """Decide a property (e.g. from VNN-LIB): `adversarial` (VNN-COMP `sat`) with an input that
    onnxruntime confirms violates it, `robust` (`unsat`), or `unknown`. Regions are tried in
    order within one time budget. solver: the MIP solver, overriding options.solver."""
    began = time.perf_counter()
    net = load(net)
    opts = _spent(_options(options, timeout, solver), began)
    if prop.num_inputs != net.input_size or prop.num_outputs != net.output_size:
        raise InputError(f"{prop.name}: the property has {prop.num_inputs} inputs and {prop.num_outputs} "
                         f"outputs, the model {net.input_size} and {net.output_size}")
    results = []
    for region in prop.regions:
        left = opts.timeout - sum(r.time for r in results)
        if left <= 0:
            break
        centre = (region.box.lo + region.box.hi) / 2.0
        r = check_region(net, region, centre, replace(opts, timeout=left), label=prop.label)
        results.append(r)
        if r.status == Status.ADVERSARIAL:
            break
    return _combine(results, len(prop.regions))


def _combine(results: list[Result], regions: int) -> Result:
    """One verdict for several regions: any violation wins; robust needs every region robust.
    An unknown one is decided by the first region left unknown (e.g. "timeout", or "bab" when a
    search filled its memory), or by "timeout" when time ran out before every region was tried."""
    last = results[-1]
    if last.status == Status.ADVERSARIAL or regions == 1:
        status = last.status
    elif len(results) == regions and all(r.status == Status.ROBUST for r in results):
        status = Status.ROBUST
    else:
        status = Status.UNKNOWN
    decided_by = last.decided_by
    if status == Status.UNKNOWN:
        unknown = [r for r in results if r.status == Status.UNKNOWN]
        decided_by = unknown[0].decided_by if unknown and len(results) == regions else "timeout"
    return Result(status, last.label, last.prediction, min(r.margin_lower for r in results),
                  min(r.margin_upper for r in results), last.counterexample, last.adversarial_label,
                  sum(r.time for r in results), decided_by,
                  {"regions": len(results), **last.stats}, last.counterexample_outputs)
