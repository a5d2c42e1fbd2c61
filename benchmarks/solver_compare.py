"""HiGHS vs CBC on the small MaxPool CNN and ResNet of benchmarks/small_nets.py, each given as a
torch module, as its ONNX file and as a Conv/ReLU-only rewrite; every verdict checked by PGD.

    python benchmarks/small_nets.py --out /work/runs/small_nets          # train + export first
    python benchmarks/solver_compare.py --eps 0.02 --count 50 --timeout 60 --modes default,force-mip

For each mode, model, form and solver, verifies MNIST test images --start .. --start+--count at
--eps (label = the true label) and records status, time, decided_by and the margin bounds.

Forms: `module` = verifier.load(torch module, input_shape=(1, 28, 28)); `onnx` = the exported
file (BatchNorm kept as BatchNormalization nodes, so a second import path); `rewrite` = the same
function with the pools written as convolutions and ReLUs (small_nets.relu_rewrite, exported in
memory), which checks the MaxPool / average-pool encodings against plain ReLU encodings.

Modes: `default` = the verifier's own pipeline (bounds, attack, LP, MIP); `force-mip` (also
`--force-mip`) = no attack and no branch and bound, so every adversarial sample (but a
misclassified one) and every robust one the bounds and LPs cannot prove goes to the MIP solver
(VerifyOptions(bab="off", attack_steps=0, attack_restarts=0)); --option name=value changes any
VerifyOptions field in every mode (e.g. --option symbolic=false sends more samples to the MIP).

Checks, printed at the end and reflected in the exit code (0 all passed, 1 a FAILURE or a crash
of the verifier, 2 the verifier could not run something, e.g. a missing op or option):
  (a) per model and sample, the verdicts of every form, solver and mode: `robust` against
      `adversarial` is a FAILURE; `unknown` against a verdict is a mismatch, reported only;
  (b) an independent PGD attack in torch on the module (targeted at every other class, many
      restarts, inside the eps-ball and [0, 1]): a violation on a sample called `robust` is a
      FAILURE (unsound); reported: how many `adversarial` samples PGD also finds;
  (c) every counterexample is re-checked in torch: inside the ball, and misclassified.
Writes one CSV row per (mode, model, form, solver, sample) to --out and prints a markdown table.

Why eps 0.02 (measured on images 0-49, 60 s limit): both networks get a mix (44 robust, 6
adversarial each) and no `unknown` on the module and ONNX forms with either solver; on the
MaxPool CNN 11 samples need the MIP (16 with force-mip), on the ResNet bounds and LPs decide all
but one (force-mip). At 0.015 the MIP decides almost nothing; at 0.03 (32/18 on the CNN, 42/8
on the ResNet) CBC spends 60 s on most adversarial CNN samples (it has no stop at the first
incumbent below 0, so it runs on to optimality): 885 s against 131 s for HiGHS in force-mip.
"""

from __future__ import annotations

import argparse
import csv
import io
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import small_nets  # noqa: E402

import verifier  # noqa: E402
from verifier.options import VerifyOptions, parse_setting  # noqa: E402

#: No attack and no branch and bound: what bounds and LPs leave open goes to the MIP solver.
#: Symbolic bounds stay on: without them (interval bounds only) the ResNet's MIPs have ~1,000
#: binaries at eps 0.005 and none finished in 20 s (measured); add --option symbolic=false to drop them.
FORCE_MIP = {"bab": "off", "attack_steps": 0, "attack_restarts": 0}
MODES = {"default": {}, "force-mip": FORCE_MIP}
FORMS = ("module", "onnx", "rewrite")


class Unavailable(Exception):
    """The verifier cannot run this yet (an op, the torch import, a solver option)."""


# ---------------------------------------------------------------------------------- PGD (torch)

def ball(x0: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The eps-ball around x0 intersected with [0, 1], as float32 bounds rounded inward (every
    float32 point between them is inside the float64 set the verifier decides)."""
    lo64, hi64 = np.maximum(x0 - eps, 0.0), np.minimum(x0 + eps, 1.0)
    lo, hi = lo64.astype(np.float32), hi64.astype(np.float32)
    lo = np.where(lo < lo64, np.nextafter(lo, np.float32(np.inf)), lo)
    hi = np.where(hi > hi64, np.nextafter(hi, np.float32(-np.inf)), hi)
    return lo, hi


def margin(logits: torch.Tensor, label: int) -> torch.Tensor:
    """logit[label] - max other logit, per row (<= 0: misclassified; ties count)."""
    others = logits.clone()
    others[:, label] = -torch.inf
    return logits[:, label] - others.max(1).values


def pgd(model: torch.nn.Module, x0: np.ndarray, label: int, eps: float, restarts: int = 20,
        steps: int = 100, seed: int = 0) -> tuple[float, np.ndarray]:
    """Least margin found over the ball (and the point): signed-gradient steps on
    logit[label] - logit[target] for each other target, `restarts` starts per target (the
    centre, random points, random corners), step size eps/4 decaying to 0 (cosine)."""
    lo, hi = (torch.from_numpy(b.astype(np.float32))[None] for b in ball(x0, eps))
    gen = torch.Generator().manual_seed(seed)
    targets = torch.tensor([t for t in range(10) if t != label]).repeat_interleave(restarts)
    n = len(targets)
    u = torch.rand((n,) + lo.shape[1:], generator=gen)
    x = lo + (hi - lo) * u
    x[::restarts] = torch.clamp(torch.from_numpy(x0.astype(np.float32))[None], lo, hi)  # the centre
    corners = torch.arange(n) % restarts >= restarts - restarts // 4  # a quarter start at corners
    x[corners] = torch.where(u[corners] < 0.5, lo, hi).expand_as(x[corners])
    best, best_x = np.inf, x0.astype(np.float32)
    rows = torch.arange(n)
    for k in range(steps + 1):
        x.requires_grad_(True)
        logits = model(x)
        with torch.no_grad():
            m = margin(logits, label)
            i = int(m.argmin())
            if m[i].item() < best:
                best, best_x = m[i].item(), x[i].detach().numpy().copy()
        if k == steps or best <= 0:
            break
        loss = (logits[:, label] - logits[rows, targets]).sum()
        (grad,) = torch.autograd.grad(loss, x)
        step = eps / 4 * 0.5 * (1 + np.cos(np.pi * k / steps))
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
    return best, best_x


def torch_margin(model: torch.nn.Module, x: np.ndarray, label: int) -> float:
    with torch.no_grad():
        batch = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape((1,) + small_nets.INPUT_SHAPE))
        return margin(model(batch), label).item()


# ---------------------------------------------------------------------------------- verifier side

def load_form(name: str, form: str, module: torch.nn.Module, folder: Path):
    """The verifier's Network for one form of a model (Unavailable if it cannot be loaded)."""
    try:
        if form == "onnx":
            return verifier.load(str(folder / f"{name}.onnx"))
        if form == "rewrite":
            buffer = io.BytesIO()
            small_nets.export_onnx(small_nets.relu_rewrite(module), buffer)
            return verifier.load(buffer.getvalue())
        return verifier.load(module, input_shape=small_nets.INPUT_SHAPE)
    except verifier.VerifierError as e:
        raise Unavailable(f"{name} ({form}): {e}") from None


def verify_row(net, module: torch.nn.Module, image: np.ndarray, label: int, eps: float, opts: VerifyOptions,
               kwargs: dict) -> dict:
    """One verification as a CSV row; a counterexample is re-checked in torch (its margin there
    and its L-infinity distance from the image)."""
    r = verifier.verify(net, image.reshape(net.input_shape), eps, label=label, options=opts, **kwargs)
    ce_margin = ce_distance = np.nan
    if r.counterexample is not None:
        ce = np.asarray(r.counterexample, dtype=np.float64).ravel()
        ce_margin = torch_margin(module, ce, label)
        ce_distance = float(np.abs(ce - image.ravel()).max())
    stats = r.stats
    unstable = stats.get("unstable_lp", stats.get("unstable_symbolic", stats.get("unstable_interval")))
    return {"prediction": r.prediction, "status": r.status.value, "decided_by": r.decided_by,
            "margin_lower": r.margin_lower, "margin_upper": r.margin_upper, "time": r.time,
            "adversarial_label": r.adversarial_label, "ce_margin": ce_margin, "ce_distance": ce_distance,
            "relus": stats.get("relus"), "unstable": unstable, "binaries": stats.get("binaries"),
            "mip_nodes": stats.get("mip_nodes"), "error": ""}


# ---------------------------------------------------------------------------------- report

def summary_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys((r["mode"], r["model"], r["form"], r["solver"]) for r in rows))
    totals = {k: sum(r["time"] for r in rows if (r["mode"], r["model"], r["form"], r["solver"]) == k) for k in keys}
    out = ["| mode | model | form | solver | robust | adversarial | unknown | by MIP | total time | median time "
           "| time CBC/HiGHS |",
           "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k in keys:
        group = [r for r in rows if (r["mode"], r["model"], r["form"], r["solver"]) == k]
        count = {s: sum(r["status"] == s for r in group) for s in ("robust", "adversarial", "unknown", "error")}
        highs = totals.get((k[0], k[1], k[2], "highs"))
        ratio = f"{totals[k] / highs:.2f}" if k[3] == "cbc" and highs else ""
        unknown = f"{count['unknown']}" + (f" (+{count['error']} errors)" if count["error"] else "")
        out.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {count['robust']} | {count['adversarial']} | {unknown} | "
                   f"{sum(r['decided_by'] == 'mip' for r in group)} | {totals[k]:.1f} s | "
                   f"{statistics.median(r['time'] for r in group):.3f} s | {ratio} |")
    return "\n".join(out)


def checks(rows: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """(failures, mismatches, notes) over all rows."""
    failures, mismatches, notes = [], [], []
    done = [r for r in rows if r["status"] != "error"]
    for model in dict.fromkeys(r["model"] for r in done):
        mine = [r for r in done if r["model"] == model]
        robust_pgd = adversarial = adversarial_pgd = 0
        for index in sorted({r["index"] for r in mine}):
            sample = [r for r in mine if r["index"] == index]
            verdicts = {f"{r['mode']}/{r['form']}/{r['solver']}": r["status"] for r in sample}
            kinds = set(verdicts.values())
            if {"robust", "adversarial"} <= kinds:
                failures.append(f"{model} #{index}: robust and adversarial: {verdicts}")
            elif len(kinds) > 1:
                mismatches.append(f"{model} #{index}: {verdicts}")
            pgd_found = sample[0]["pgd_margin"] <= 0
            if "robust" in kinds and pgd_found:
                robust_pgd += 1
                failures.append(f"{model} #{index}: called robust, but PGD found margin {sample[0]['pgd_margin']:.3g}")
            if "adversarial" in kinds:
                adversarial += 1
                adversarial_pgd += pgd_found
            if not pgd_found and "adversarial" not in kinds and kinds <= {"unknown"}:
                notes.append(f"{model} #{index}: unknown everywhere, PGD margin {sample[0]['pgd_margin']:.3g}")
            for r in sample:
                # torch's float32 logits may differ from onnxruntime's in the last bits: 1e-5 of slack
                confirmed = r["ce_margin"] <= 1e-5 and r["ce_distance"] <= r["eps"] + 1e-6
                if r["status"] == "adversarial" and not confirmed:
                    failures.append(f"{model} #{index} {r['mode']}/{r['form']}/{r['solver']}: counterexample not "
                                    f"confirmed in torch (margin {r['ce_margin']:.3g}, "
                                    f"distance {r['ce_distance']:.3g})")
        notes.append(f"{model}: PGD finds {adversarial_pgd} of the {adversarial} samples the verifier called "
                     f"adversarial (in some run); {robust_pgd} robust samples broken by PGD")
    return failures, mismatches, notes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", default="/work/runs/small_nets", help="where small_nets.py wrote the models")
    p.add_argument("--models", default=",".join(small_nets.MODELS))
    p.add_argument("--forms", default=",".join(FORMS))
    p.add_argument("--solvers", default="highs,cbc")
    p.add_argument("--modes", default="default", help="comma-separated: default, force-mip")
    p.add_argument("--force-mip", action="store_true", help="same as --modes force-mip")
    p.add_argument("--eps", type=float, default=0.02)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--option", action="append", default=[], help="VerifyOptions field as name=value (every mode)")
    p.add_argument("--pgd-restarts", type=int, default=20, help="per target class")
    p.add_argument("--pgd-steps", type=int, default=100)
    p.add_argument("--skip-unavailable", action="store_true",
                   help="run what the verifier supports instead of stopping (exit code 2 all the same)")
    p.add_argument("--out", default="/work/runs/small_nets/compare.csv")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    folder = Path(args.models_dir)
    models, forms = args.models.split(","), args.forms.split(",")
    solvers = args.solvers.split(",")
    modes = ["force-mip"] if args.force_mip else args.modes.split(",")
    for what, chosen, allowed in (("model", models, small_nets.MODELS), ("form", forms, FORMS), ("mode", modes, MODES)):
        if bad := [c for c in chosen if c not in allowed]:
            p.error(f"unknown {what} {', '.join(bad)} (expected one of {', '.join(allowed)})")
    settings = dict(parse_setting(o) for o in args.option)

    # Everything that can fail for want of a feature fails here, before any long run.
    problems: list[str] = []
    modules = {}
    for name in models:
        if not (folder / f"{name}.pt").exists():
            raise SystemExit(f"{folder / (name + '.pt')} is missing: "
                             f"run python benchmarks/small_nets.py --out {folder}")
        modules[name] = small_nets.load_module(name, folder)
    nets = {}
    for name in models:
        for form in forms:
            try:
                nets[name, form] = load_form(name, form, modules[name], folder)
            except Unavailable as e:
                problems.append(str(e))
    for text in problems:
        print(f"cannot run: {text}", file=sys.stderr)
    if problems and not args.skip_unavailable:
        return 2

    _, test_y = small_nets.load_mnist("test", args.start + args.count)
    indices = range(args.start, args.start + args.count)
    raw = np.load(small_nets.DATA / "mnist_test.npz")["images"]
    images = {i: raw[i].astype(np.float64)[None] / 255.0 for i in indices}  # in float64, as eps_ball.py
    pgd_results = {}
    for name in models:
        t = time.perf_counter()
        for i in indices:
            pgd_results[name, i] = pgd(modules[name], images[i], int(test_y[i]), args.eps, args.pgd_restarts,
                                       args.pgd_steps)
        found = sum(pgd_results[name, i][0] <= 0 for i in indices)
        print(f"PGD {name}: violations on {found} of {len(indices)} samples at eps={args.eps} "
              f"({time.perf_counter() - t:.1f}s)")

    rows: list[dict] = []
    errors: list[str] = []  # VerifierError: not supported (yet)
    crashes: list[str] = []  # any other exception: a bug
    runs = [(mode, name, form, solver) for mode in modes for name in models for form in forms for solver in solvers
            if (name, form) in nets]
    for mode, name, form, solver in runs:
        kwargs = {"solver": solver}
        opts = VerifyOptions(timeout=args.timeout, **{**MODES[mode], **settings})
        print(f"== {mode} {name} {form} {solver}", flush=True)
        for i in indices:
            row = {"mode": mode, "model": name, "form": form, "solver": solver, "index": i, "label": int(test_y[i]),
                   "eps": args.eps, "pgd_margin": pgd_results[name, i][0]}
            try:
                row.update(verify_row(nets[name, form], modules[name], images[i], row["label"], args.eps, opts, kwargs))
            except Exception as e:  # noqa: BLE001 - reported at the end; the other runs go on
                text = f"{mode} {name} {form} {solver} #{i}: {type(e).__name__}: {e}"
                if isinstance(e, verifier.VerifierError):
                    errors.append(text)  # a one-line error: something not supported (yet)
                else:
                    crashes.append(text)
                    traceback.print_exc()
                print(f"  error: {text} (skipping the rest of this run)", file=sys.stderr, flush=True)
                rows.append({**row, "status": "error", "decided_by": "error", "time": 0.0, "error": str(e)})
                break
            rows.append(row)
            print(f"  {i:>4} {row['label']} {row['prediction']} {row['status']:<11} {row['decided_by']:<8} "
                  f"[{row['margin_lower']:9.4f}, {row['margin_upper']:9.4f}] {row['time']:7.3f}s  "
                  f"pgd {row['pgd_margin']:8.4f}", flush=True)

    if rows:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        names = list(dict.fromkeys(k for r in rows for k in r))
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=names)
            w.writeheader()
            w.writerows(rows)
        print(f"\nwrote {out}")
    print(f"\neps={args.eps} samples={args.start}..{args.start + args.count - 1} timeout={args.timeout}s "
          f"options={settings} machine={platform.machine()} Python {platform.python_version()}\n")
    if rows:
        print(summary_table(rows))
    failures, mismatches, notes = checks(rows)
    print()
    for text in notes:
        print(f"note: {text}")
    for text in mismatches:
        print(f"mismatch (unknown vs a verdict): {text}")
    for text in failures:
        print(f"FAILURE: {text}")
    for text in crashes:
        print(f"FAILURE (the verifier crashed): {text}")
    for text in problems + errors:
        print(f"could not run: {text}")
    print(f"\n{len(failures) + len(crashes)} failures, {len(mismatches)} mismatches, "
          f"{len(problems) + len(errors)} not run")
    return 1 if failures or crashes else 2 if problems or errors else 0


if __name__ == "__main__":
    sys.exit(main())
