"""PGD with random restarts, in numpy over the Network's own ops (forward + vector-Jacobian).

It runs before any MIP: most violations fall to it in milliseconds, and its best points order
(and seed) the exact search. Each disjunct of the violation gets its own restarts; the loss is
the disjunct's slack max_k (C_k y - d_k) (for robustness, logit[label] - logit[target]), with
signed-gradient steps in the L-infinity geometry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from verifier.deadline import Pace
from verifier.network.graph import Network
from verifier.spec.ball import InputBox
from verifier.spec.property import Conjunction


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
    value: float  # min over the disjuncts of the slack at x (<= 0: a violation)
    per_disjunct: np.ndarray  # best slack seen for each disjunct


def pgd_attack(net: Network, box: InputBox, x0: np.ndarray, disjuncts: list[Conjunction],
               restarts: int = 6, steps: int = 40, seed: int = 0, deadline: float = np.inf) -> AttackResult:
    rng = np.random.default_rng(seed)
    count = len(disjuncts)
    slack_all = lambda y: np.stack([c.slack(y) for c in disjuncts], axis=1)  # noqa: E731
    start = slack_all(net.forward(x0[None, :]))[0]
    best = AttackResult(x0.copy(), float(start.min()) if count else np.inf, start.copy())
    width = box.hi - box.lo
    if count == 0 or np.all(width == 0) or steps <= 0 or time.perf_counter() > deadline:
        return best
    starts = [x0[None, :], box.lo + width * rng.random((max(restarts - 1, 0), x0.size))]
    if restarts > 2:
        # Corners, biased toward the upper bounds: images' logits are often flat near the
        # sample and steep toward the bright corners of the box, where the centre never leads.
        bias = np.array([0.5, 0.8, 0.95])[:, None]
        starts.append(np.where(rng.random((3, x0.size)) < bias, box.hi, box.lo))
    per_start = np.concatenate(starts)
    x = np.concatenate([per_start] * count)
    owner = np.repeat(np.arange(count), per_start.shape[0])
    rows = np.arange(x.shape[0])
    pace = Pace(deadline)  # a step (gradient, update, evaluation) starts only if it ends in time
    pace.next()
    for step in range(steps + 1):
        values = net.forward_all(x)
        slacks = slack_all(values[net.output_node])  # (B, count)
        own = slacks[rows, owner]
        np.minimum.at(best.per_disjunct, owner, own)
        least = slacks.min(axis=1)
        k = int(np.argmin(least))
        if least[k] < best.value:
            best.value, best.x = float(least[k]), x[k].copy()
        if step == steps or best.value <= 0 or not pace.next():
            break
        grad_out = np.empty((x.shape[0], net.output_size))
        for i, conj in enumerate(disjuncts):  # gradient of the active (largest) row
            mine = owner == i
            active = np.argmax(values[net.output_node][mine] @ conj.C.T - conj.d, axis=1)
            grad_out[mine] = conj.C[active]
        g = input_gradient(net, values, grad_out)
        alpha = width * (0.25 * (1.0 - step / steps) + 0.02)
        x = np.clip(x - alpha * np.sign(g), box.lo, box.hi)
    return best
