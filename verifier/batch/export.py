"""Counterexamples of a test set as files: one `.npz` per sample that has one.

`DIR/sample_00042.npz` holds, for sample 42:

- `index`, `label` (ints) and `original`: the sample as verified (float64, the model's input
  shape, after uint8 scaling);
- where the sample is adversarial at eps: `adversarial_label` and `perturbed` (float32, the
  model's input shape: the point onnxruntime re-checked; a misclassified sample is its own
  counterexample, `perturbed` equal to `original`) and `eps` (of a run at several radii: the
  smallest radius the sample is adversarial at, whose example lies in every larger ball);
- where a distortion run found an example: `distortion_example` (float32, same shape),
  `distortion_label`, `distortion_norm` and `distortion` (its distance, the upper bound);
- `examples`: the names of the example arrays present ("perturbed", "distortion_example"), so a
  reader can tell which without catching KeyError.

Why files apart from the results store: a store's arrays are flat float32 blobs in SQLite,
fine for resuming and the report, not for a user's `np.load`. Each file is written to a
temporary name and renamed, so a crash never leaves a torn `.npz` under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from verifier.errors import InputError

OPTION = "--save-examples"


def prepare_folder(folder: str | Path) -> Path:
    """Create the export folder (its parent must exist) before any work is done, so that a typo
    in its name fails at once rather than after hours of verification."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{OPTION} {folder}: is a file, expected a folder")
    parent = folder.parent if str(folder.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{OPTION} {folder}: the folder {parent} does not exist")
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise InputError(f"{OPTION} {folder}: cannot create the folder: {e.strerror}") from None
    return folder


def file_name(index: int) -> str:
    return f"sample_{int(index):05d}.npz"


def write_example(folder: str | Path, index: int, label: int, original, input_shape, *, eps: float | None = None,
                  perturbed=None, adversarial_label: int | None = None, distortion_example=None,
                  distortion_label: int | None = None, distortion_norm: str | None = None,
                  distortion: float | None = None) -> Path | None:
    """Write one sample's file; None (nothing written) when it has no example."""
    shape = tuple(int(s) for s in input_shape)
    arrays: dict[str, np.ndarray] = {"index": np.int64(index), "label": np.int64(label),
                                     "original": np.asarray(original, dtype=np.float64).reshape(shape)}
    present = []
    if perturbed is not None:
        present.append("perturbed")
        arrays["perturbed"] = np.asarray(perturbed, dtype=np.float32).reshape(shape)
        arrays["adversarial_label"] = np.int64(-1 if adversarial_label is None else adversarial_label)
        if eps is not None:
            arrays["eps"] = np.float64(eps)
    if distortion_example is not None:
        present.append("distortion_example")
        arrays["distortion_example"] = np.asarray(distortion_example, dtype=np.float32).reshape(shape)
        arrays["distortion_label"] = np.int64(-1 if distortion_label is None else distortion_label)
        arrays["distortion_norm"] = np.str_(distortion_norm or "")
        arrays["distortion"] = np.float64(np.nan if distortion is None else distortion)
    if not present:
        return None
    arrays["examples"] = np.array(present)
    path = Path(folder) / file_name(index)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as f:
            np.savez(f, **arrays)
        os.replace(partial, path)
    except OSError as e:
        raise InputError(f"{OPTION} {folder}: cannot write {path.name}: {e.strerror}") from None
    return path


def export_rows(folder: str | Path, rows: list[dict], images, input_shape, eps: float | None = None) -> list[Path]:
    """Write the file of every sample (results-store rows, flat arrays) that has an example;
    `images[row["index"]]` is its original. Returns the paths written, by index.

    A run at several radii has a row per (sample, eps) and `eps` None: the sample's file holds the
    counterexample of its smallest adversarial radius (with that radius as `eps`), which lies in
    the ball of every radius the sample is adversarial at, and the distortion example of the row
    that carries it."""
    samples: dict[int, list[dict]] = {}
    for r in rows:
        samples.setdefault(r["index"], []).append(r)
    written = []
    for index, mine in samples.items():
        mine = sorted(mine, key=lambda r: r.get("eps") or 0.0)
        adversarial = next((r for r in mine if r.get("counterexample") is not None), {})
        distorted = next((r for r in mine if r.get("distortion_example") is not None), {})
        path = write_example(folder, index, mine[0]["label"], images[index], input_shape,
                             eps=eps if eps is not None else adversarial.get("eps"),
                             perturbed=adversarial.get("counterexample"),
                             adversarial_label=adversarial.get("adversarial_label"),
                             distortion_example=distorted.get("distortion_example"),
                             distortion_label=distorted.get("distortion_label"),
                             distortion_norm=distorted.get("distortion_norm"),
                             distortion=distorted.get("distortion_upper"))
        if path is not None:
            written.append(path)
    return written
