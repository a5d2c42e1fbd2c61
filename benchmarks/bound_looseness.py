"""How loose are the refined layer bounds? Per ReLU layer of an mnistfc instance: unstable neurons
by alpha-CROWN, by refined bounds, and at least truly unstable (PGD found both signs); mean width
of the refined-unstable neurons' intervals by alpha-CROWN, by refinement, and as reached by PGD
(4 restarts x 150 signed-gradient steps per neuron and direction, a lower estimate of the range).

    python benchmarks/bound_looseness.py ../shared/benchmarks/vnncomp2021/mnistfc 256x6 prop_0_0.03 120

The last argument is the refinement time in seconds (passes of doubling length, as the verifier
runs them, one core)."""
import argparse
import time
from pathlib import Path
import numpy as np, torch
import verifier
from verifier.bab.layered import as_layered
from verifier.bab.crown import intermediate_bounds
from verifier.bab.refine import refined_bounds
from verifier.bounds.interval import interval_bounds
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("bench")
parser.add_argument("network", help="e.g. 256x6")
parser.add_argument("prop", help="e.g. prop_0_0.03")
parser.add_argument("seconds", type=float)
args = parser.parse_args()
B = Path(args.bench)
name, prop, secs = args.network, args.prop, args.seconds
torch.set_num_threads(1)
net = verifier.load(B / f"onnx/mnist-net_{name}.onnx")
spec = verifier.Property.from_vnnlib(B / f"vnnlib/{prop}.vnnlib")
box = spec.regions[0].box
L = as_layered(net)
bounds = interval_bounds(net, box.lo, box.hi)
lo = [torch.as_tensor(bounds[p][0]).reshape(1, -1) for p in L.pre_nodes]
hi = [torch.as_tensor(bounds[p][1]).reshape(1, -1) for p in L.pre_nodes]
x_lo, x_hi = torch.as_tensor(box.lo).flatten(), torch.as_tensor(box.hi).flatten()
lo, hi = intermediate_bounds(L, x_lo, x_hi, lo, hi, 20)
alpha = ([t.clone() for t in lo], [t.clone() for t in hi])
end = time.perf_counter() + secs
per, finished = 2.0, {}
while time.perf_counter() < end:
    per = min(per, (end - time.perf_counter()) / (L.depth - 1))
    lo, hi, st = refined_bounds(L, x_lo, x_hi, lo, hi, 20, per, 8, end, finished=finished)
    per *= 2
# empirical ranges by PGD on each neuron, both directions
def pre(x, k):
    h = x
    for j in range(k + 1):
        z = h @ L.weights[j].T + L.biases[j]
        h = torch.relu(z)
    return z
torch.manual_seed(0)
for k in range(L.depth):
    n = lo[k].shape[1]
    best_lo = torch.full((n,), np.inf, dtype=torch.float64); best_hi = torch.full((n,), -np.inf, dtype=torch.float64)
    for restart in range(4):
        x = (x_lo + (x_hi - x_lo) * torch.rand(2 * n, x_lo.numel(), dtype=torch.float64)).requires_grad_()
        sign = torch.cat([torch.ones(n), -torch.ones(n)]).double()
        for step in range(150):
            z = pre(x, k)
            obj = (z[torch.arange(n), torch.arange(n)] * sign[:n]).sum() + (z[n + torch.arange(n), torch.arange(n)] * sign[n:]).sum()
            g, = torch.autograd.grad(obj, x)
            with torch.no_grad():
                x -= (x_hi - x_lo) * 0.05 * (1 - step / 150) * g.sign()
                x.copy_(torch.max(torch.min(x, x_hi), x_lo))
        with torch.no_grad():
            z = pre(x, k)
            best_lo = torch.minimum(best_lo, z[torch.arange(n), torch.arange(n)])
            best_hi = torch.maximum(best_hi, z[n + torch.arange(n), torch.arange(n)])
    l, u = lo[k][0], hi[k][0]
    al, au = alpha[0][k][0], alpha[1][k][0]
    unst = (l < 0) & (u > 0)
    real_unst = (best_lo < 0) & (best_hi > 0)
    w_b = float((u - l)[unst].mean()) if unst.any() else 0
    w_a = float((au - al)[unst].mean()) if unst.any() else 0
    w_e = float((best_hi - best_lo)[unst].mean()) if unst.any() else 0
    print(f"layer {k}: unstable alpha {int(((al<0)&(au>0)).sum())} refined {int(unst.sum())} real>= {int(real_unst.sum())} | mean width over refined-unstable: alpha {w_a:.2f} refined {w_b:.2f} empirical {w_e:.2f}", flush=True)
