"""Two small MNIST networks for the broader-network benchmarks: a CNN with MaxPool and a
ResNet-style network with two residual blocks, trained in seconds on the CPU.

    python benchmarks/small_nets.py --out /work/runs/small_nets

writes `maxpool_cnn.onnx`, `resnet2.onnx` (torch.onnx.export, dynamo=False, opset 13, BatchNorm
kept as BatchNormalization nodes) and their state dicts (`maxpool_cnn.pt`, `resnet2.pt`) to --out,
and prints each network's size, training time, accuracy on the first 1,000 MNIST test images and
how many ReLUs interval bounds leave unstable. Deterministic (fixed seeds, one thread). Both take
a 1x1x28x28 image in [0, 1] and halve it first with a 2x2 average pool (28 -> 14), which keeps
the number of ReLUs (and so of MILP binaries) low:

    maxpool_cnn: AvgPool(2) -> Conv(1->4, 3x3, pad 1) -> ReLU [4x14x14 = 784] -> MaxPool(2) [4x7x7 = 196,
                 4 candidates each] -> Flatten -> Linear(196, 32) -> ReLU [32] -> Linear(32, 10)
    resnet2:     AvgPool(2) -> Conv(1->8, 3x3, stride 2, pad 1) -> BN -> ReLU [8x7x7 = 392]
                 -> 2 x { y = ReLU(x + BN(Conv(ReLU(BN(Conv(x)))))) } [2 x 2 x 392]
                 -> GlobalAveragePool [8] -> Linear(8, 10)

Training (`train`) adds a ReLU-stability and an activation-sparsity loss to the cross-entropy,
which cut the ReLUs (and MaxPool candidates) left undecided by bounds several-fold for 1-4 points
of accuracy: see its docstring for the numbers.

`load_module(name, folder)` rebuilds a trained module from its state dict (benchmarks/solver_compare.py);
`relu_rewrite(module)` is the same function written with Conv and ReLU only (the average pools as
fixed convolutions, each 2x2 MaxPool as three ReLU layers), an independent path to compare the
verifier's pooling encodings with. After training, the exported files are checked against the
modules with onnxruntime (and the rewrites against the modules in torch) on random inputs.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
INPUT_SHAPE = (1, 28, 28)
#: BatchNorm's epsilon: with the default 1e-5 the sparsity loss leaves a channel with variance
#: ~2e-7 that BatchNorm then scales by ~280 (float32 torch off by 2e-3 in the logits, and wide
#: bounds); 1e-3 caps such gains (measured: largest ~40, unstable ReLUs 225 -> 123 at eps 0.01).
BN_EPS = 1e-3


class MaxPoolCNN(nn.Module):
    def __init__(self, channels: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.down = nn.AvgPool2d(2)  # 28 -> 14
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)  # 14 -> 7
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(channels * 7 * 7, hidden)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv(self.down(x))))
        return self.fc2(self.relu2(self.fc1(self.flatten(x))))


class ResidualBlock(nn.Module):
    """y = ReLU(x + BN(Conv(ReLU(BN(Conv(x))))))"""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(x + self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))


class ResNet2(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.down = nn.AvgPool2d(2)  # 28 -> 14
        self.stem = nn.Conv2d(1, channels, 3, stride=2, padding=1)  # 14 -> 7
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.relu = nn.ReLU()
        self.block1 = ResidualBlock(channels)
        self.block2 = ResidualBlock(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)  # exported as GlobalAveragePool
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(self.down(x))))
        x = self.block2(self.block1(x))
        return self.fc(self.flatten(self.pool(x)))


MODELS = {"maxpool_cnn": MaxPoolCNN, "resnet2": ResNet2}


def load_mnist(split: str, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images as float32 N x 1 x 28 x 28 in [0, 1], labels as int64) of the first `count`."""
    data = np.load(DATA / f"mnist_{split}.npz")
    images, labels = data["images"][:count], data["labels"][:count]
    return (images.astype(np.float32) / 255.0)[:, None], labels.astype(np.int64)


def _interval(layer: nn.Module, lo: torch.Tensor, hi: torch.Tensor, stats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval image of one layer (interval bound propagation, for the training regulariser)."""
    if isinstance(layer, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.Flatten, nn.ReLU, nn.Identity)):
        return layer(lo), layer(hi)  # monotone
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    if isinstance(layer, nn.Conv2d):
        centre = layer(centre)
        radius = nn.functional.conv2d(radius, layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation,
                                      layer.groups)
    elif isinstance(layer, nn.Linear):
        centre, radius = layer(centre), radius @ layer.weight.abs().t()
    elif isinstance(layer, nn.BatchNorm2d):  # the batch's statistics while training, else the running ones
        mean, var = stats[layer] if layer.training else (layer.running_mean, layer.running_var)
        scale = (layer.weight / torch.sqrt(var + layer.eps))[None, :, None, None]
        centre = scale * (centre - mean[None, :, None, None]) + layer.bias[None, :, None, None]
        radius = scale.abs() * radius
    else:
        raise TypeError(f"no interval rule for {type(layer).__name__}")
    return centre - radius, centre + radius


def preactivation_bounds(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, stats: dict | None = None) -> list:
    """Interval bounds (lower, upper) of every ReLU's input of a MaxPoolCNN or ResNet2 over the box [lo, hi]."""
    pre = []
    stats = stats or {}
    f = lambda layer, bounds: _interval(layer, *bounds, stats)  # noqa: E731

    def relu(bounds):
        pre.append(bounds)
        return bounds[0].clamp(min=0), bounds[1].clamp(min=0)

    if isinstance(model, MaxPoolCNN):
        b = relu(f(model.conv, f(model.down, (lo, hi))))
        relu(f(model.fc1, f(model.flatten, f(model.pool, b))))
    elif isinstance(model, ResNet2):
        b = relu(f(model.bn, f(model.stem, f(model.down, (lo, hi)))))
        for block in (model.block1, model.block2):
            inner = relu(f(block.bn1, f(block.conv1, b)))
            lo2, hi2 = f(block.bn2, f(block.conv2, inner))
            b = relu((b[0] + lo2, b[1] + hi2))
    else:
        raise TypeError(f"no interval bounds for {type(model).__name__}")
    return pre


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int = 2, batch: int = 128,
          lr: float = 1e-2, seed: int = 0, stability: float = 0.5, stability_eps: float = 0.02,
          stability_batch: int = 32, sparsity: float = 0.5) -> nn.Module:
    """Adam with a one-cycle learning rate on cross-entropy plus two regularisers that make the
    network easier to verify exactly (fewer ReLUs and MaxPool candidates left undecided by bounds):

    * ReLU stability (Xiao et al., ICLR 2019, "RS loss"): `stability` x mean of -tanh(1 + l u) over
      every ReLU's interval bounds (l, u) on the stability_eps-ball of the first `stability_batch`
      images of each batch; it pushes pre-activations away from 0 relative to their range.
    * Activation sparsity: `sparsity` x mean ReLU output; it turns background features off, so a
      2x2 MaxPool over background sees four zeros (one value) instead of four similar ranges.

    Measured (60,000 images, 2 epochs, ReLUs unstable by interval bounds per test image at eps
    0.01 / 0.02): without them the MaxPool CNN keeps 226 / 245 (~550 MILP binaries at 0.015,
    MaxPool candidates included; some MIPs unfinished in 60 s) and the ResNet 1,199 / 1,366 (~670
    still unstable after the verifier's symbolic bounds at 0.015: no MIP finished in 60 s); with
    them 13 / 26 and 123 / 226, for accuracy 96.0% -> 94.7% and 96.9% -> 92.6%. Returns the model
    in eval mode."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    steps = len(x) // batch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps)
    stats, outputs = {}, []

    def keep_stats(layer, inputs, output):  # the batch statistics BatchNorm normalises with
        stats[layer] = (inputs[0].mean((0, 2, 3)).detach(), inputs[0].var((0, 2, 3), unbiased=False).detach())

    hooks = [m.register_forward_hook(keep_stats) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks += [m.register_forward_hook(lambda m, i, o: outputs.append(o))
              for m in model.modules() if isinstance(m, nn.ReLU)]
    model.train()
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))
            for i in range(steps):
                idx = order[i * batch:(i + 1) * batch]
                outputs.clear()
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                if sparsity:
                    loss = loss + sparsity * torch.cat([o.flatten(1) for o in outputs], 1).mean()
                if stability:
                    xs = x[idx[:stability_batch]]
                    box = (xs - stability_eps).clamp(0, 1), (xs + stability_eps).clamp(0, 1)
                    pre = preactivation_bounds(model, *box, stats)
                    rs = torch.cat([-torch.tanh(1 + lo * hi).flatten(1) for lo, hi in pre], 1)
                    loss = loss + stability * rs.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
    finally:
        for h in hooks:
            h.remove()
    return model.eval()


@torch.no_grad()
def unstable_relus(model: nn.Module, images: np.ndarray, eps: float) -> float:
    """Mean number of ReLUs per image whose interval bounds on the eps-ball straddle 0."""
    x = torch.from_numpy(images)
    pre = preactivation_bounds(model.eval(), (x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
    return float(sum(((lo < 0) & (hi > 0)).flatten(1).sum(1).float().mean() for lo, hi in pre))


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    return float((model(torch.from_numpy(images)).argmax(1).numpy() == labels).mean())


def export_onnx(model: nn.Module, path) -> None:
    """The TorchScript exporter (dynamo=False), opset 13. TrainingMode.PRESERVE on a model in eval
    mode keeps BatchNormalization nodes (in eval mode, EVAL fuses them into the convolutions, as
    verifier.load(module) will), so the file and the module reach the verifier by two paths."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        target = path if hasattr(path, "write") else str(path)  # a file name or a binary buffer
        torch.onnx.export(model.eval(), torch.zeros((1,) + INPUT_SHAPE), target, dynamo=False, opset_version=13,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          input_names=["input"], output_names=["logits"])


class MaxPoolAsReLU(nn.Module):
    """2x2 stride-2 MaxPool of a NON-NEGATIVE input (it follows a ReLU) with Conv and ReLU only.
    Per channel and window (a, b, c, d): m1 = a + relu(b - a), m2 = c + relu(d - c),
    max = m1 + relu(m2 - m1); a, c, m1 >= 0 pass the ReLUs unchanged, so this is exact."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.split = nn.Conv2d(c, 4 * c, 2, stride=2, groups=c, bias=False)  # a, b - a, c, d - c
        self.pair = nn.Conv2d(4 * c, 2 * c, 1, groups=c, bias=False)  # m1, m2 - m1
        self.total = nn.Conv2d(2 * c, c, 1, groups=c, bias=False)  # m1 + relu(m2 - m1)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        with torch.no_grad():
            # window entries in the kernel's row-major order: a = (0, 0), b = (0, 1), c = (1, 0), d = (1, 1)
            rows = torch.tensor([[1, 0, 0, 0], [-1, 1, 0, 0], [0, 0, 1, 0], [0, 0, -1, 1]], dtype=torch.float32)
            self.split.weight.copy_(rows.reshape(1, 4, 2, 2).repeat(c, 1, 1, 1).reshape(4 * c, 1, 2, 2))
            pair = torch.tensor([[1, 1, 0, 0], [-1, -1, 1, 1]], dtype=torch.float32)
            self.pair.weight.copy_(pair.repeat(c, 1).reshape(2 * c, 4, 1, 1))
            self.total.weight.copy_(torch.ones(c, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.total(self.relu2(self.pair(self.relu1(self.split(x)))))


def _average_conv(channels: int, size: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, size, stride=stride, groups=channels, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0 / size**2)
    return conv


def relu_rewrite(model: nn.Module) -> nn.Module:
    """A copy of a MaxPoolCNN or ResNet2 whose pools are Conv (and ReLU) layers: the same function
    (up to float rounding) built from ops the verifier encoded before pooling support."""
    out = copy.deepcopy(model).eval()
    out.down = _average_conv(1, 2, 2)
    if isinstance(model, MaxPoolCNN):
        out.pool = MaxPoolAsReLU(model.conv.out_channels)
    elif isinstance(model, ResNet2):
        out.pool = _average_conv(model.fc.in_features, 7, 1)  # GlobalAveragePool of 7x7
    else:
        raise TypeError(f"no rewrite for {type(model).__name__}")
    return out


@torch.no_grad()
def check_exports(model: nn.Module, path: Path, count: int = 64, seed: int = 0) -> tuple[float, float]:
    """Max |difference| of the logits on random inputs in [0, 1] (and the first test images),
    relative to max(1, largest |logit|): onnxruntime on the file vs the module, and the ReLU
    rewrite vs the module."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.random((count,) + INPUT_SHAPE, dtype=np.float32), load_mnist("test", count)[0]])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ours = model(torch.from_numpy(x)).numpy()
    theirs = np.concatenate([session.run(None, {name: xi[None]})[0] for xi in x])
    rewritten = relu_rewrite(model)(torch.from_numpy(x)).numpy()
    scale = max(1.0, float(np.abs(ours).max()))
    return float(np.abs(ours - theirs).max()) / scale, float(np.abs(ours - rewritten).max()) / scale


def load_module(name: str, folder: str | Path) -> nn.Module:
    """A trained network rebuilt from `<folder>/<name>.pt`, in eval mode."""
    model = MODELS[name]()
    model.load_state_dict(torch.load(Path(folder) / f"{name}.pt", weights_only=True))
    return model.eval()


def relu_count(model: nn.Module) -> int:
    """ReLU outputs on one image (forward hooks)."""
    counts = []
    hooks = [m.register_forward_hook(lambda m, i, o: counts.append(o.numel()))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(torch.zeros((1,) + INPUT_SHAPE))
    for h in hooks:
        h.remove()
    return sum(counts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/work/runs/small_nets")
    p.add_argument("--train-count", type=int, default=60000, help="first N training images")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--test-count", type=int, default=1000, help="first N test images for the accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stability", type=float, default=0.5, help="weight of the ReLU stability loss (0: off)")
    p.add_argument("--stability-eps", type=float, default=0.02)
    p.add_argument("--sparsity", type=float, default=0.5, help="weight of the activation sparsity loss (0: off)")
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_x, train_y = load_mnist("train", args.train_count)
    test_x, test_y = load_mnist("test", args.test_count)
    for name in args.models.split(","):
        torch.manual_seed(args.seed)
        model = MODELS[name]()
        t = time.perf_counter()
        train(model, train_x, train_y, epochs=args.epochs, seed=args.seed, stability=args.stability,
              stability_eps=args.stability_eps, sparsity=args.sparsity)
        t = time.perf_counter() - t
        torch.save(model.state_dict(), out / f"{name}.pt")
        export_onnx(model, out / f"{name}.onnx")
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params} parameters, {relu_count(model)} ReLUs, trained in {t:.1f}s on "
              f"{len(train_x)} images x {args.epochs} epochs, test accuracy {accuracy(model, test_x, test_y):.3f} "
              f"(first {len(test_x)}) -> {out / (name + '.onnx')}", flush=True)
        onnx_diff, rewrite_diff = check_exports(model, out / f"{name}.onnx")
        unstable = ", ".join(f"{unstable_relus(model, test_x[:200], e):.0f} at eps {e}" for e in (0.01, 0.02))
        print(f"  ReLUs left unstable by interval bounds (mean over 200 test images): {unstable}")
        print(f"  max |logit difference| / max(1, max |logit|): onnxruntime vs torch {onnx_diff:.1e}, "
              f"ReLU rewrite vs torch {rewrite_diff:.1e}")
        if max(onnx_diff, rewrite_diff) > 1e-5:
            raise SystemExit(f"{name}: the exported or rewritten network does not match the module")


if __name__ == "__main__":
    main()
