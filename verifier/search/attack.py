"""PGD with random restarts, in numpy over the Network's own ops (forward + vector-Jacobian).

It runs before any MIP: most non-robust samples fall to it in milliseconds, and its best points
order (and seed) the exact search. Each target label gets its own restarts: the loss is
logit[label] - logit[target], with signed-gradient steps in the L-infinity geometry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from verifier.network.graph import Network
from verifier.spec.ball import InputBox


def input_gradient(net: Network, values: dict, grad_out: np.ndarray) -> np.ndarray:
    """d(sum(grad_out * output)) / d input, for a batch, by reverse-mode over the DAG."""
    grads = {net.output_node: grad_out}
    for node in reversed(net.order):
        g = grads.pop(node, None)
        if g is None:
            continue
        op = net.op(node)
        for src, gi in zip(op.inputs, op.vjp(g, [values[i] for i in op.inputs])):
            grads[src] = grads[src] + gi if src in grads else gi
    return grads.get(net.input_node, np.zeros_like(values[net.input_node]))


@dataclass
class AttackResult:
    x: np.ndarray  # best point found (flat, inside the box)
    margin: float  # logit[label] - max other at x (float64 forward)
    target_margins: np.ndarray  # best logit[label] - logit[t] seen per label t (+inf for label)


def margins_of(logits: np.ndarray, label: int) -> np.ndarray:
    others = np.delete(logits, label, axis=1)
    return logits[:, label] - others.max(axis=1)


def pgd_attack(net: Network, box: InputBox, x0: np.ndarray, label: int, targets: list[int],
               restarts: int = 6, steps: int = 40, seed: int = 0, deadline: float = np.inf,
               extra_starts: np.ndarray | None = None) -> AttackResult:
    rng = np.random.default_rng(seed)
    n_out = net.output_size
    best_target = np.full(n_out, np.inf)
    clean = net.forward(x0[None, :])
    best_x, best_margin = x0.copy(), float(margins_of(clean, label)[0])
    best_target[targets] = clean[0, label] - clean[0, targets]
    width = box.hi - box.lo
    if not targets or np.all(width == 0):
        return AttackResult(best_x, best_margin, best_target)
    starts = [x0[None, :], rng.uniform(box.lo, box.hi, (max(restarts - 1, 0), x0.size))]
    if restarts > 2:  # a corner: the extremes are where big-M encodings are loosest
        starts.append(np.where(rng.random((1, x0.size)) < 0.5, box.lo, box.hi))
    if extra_starts is not None:
        starts.append(np.atleast_2d(extra_starts))
    per_target = np.concatenate(starts)
    x = np.concatenate([per_target] * len(targets))
    target_of = np.repeat(np.asarray(targets), per_target.shape[0])
    grad_out = np.zeros((x.shape[0], n_out))
    grad_out[:, label] = 1.0
    grad_out[np.arange(x.shape[0]), target_of] -= 1.0
    for step in range(steps + 1):
        values = net.forward_all(x)
        logits = values[net.output_node]
        m = margins_of(logits, label)
        k = int(np.argmin(m))
        if m[k] < best_margin:
            best_margin, best_x = float(m[k]), x[k].copy()
        diff = logits[:, label] - logits[np.arange(x.shape[0]), target_of]
        np.minimum.at(best_target, target_of, diff)
        if step == steps or best_margin <= 0 or time.perf_counter() > deadline:
            break
        g = input_gradient(net, values, grad_out)
        alpha = width * (0.25 * (1.0 - step / steps) + 0.02)
        x = np.clip(x - alpha * np.sign(g), box.lo, box.hi)
    return AttackResult(best_x, best_margin, best_target)
