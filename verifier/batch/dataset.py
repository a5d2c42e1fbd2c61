"""Test sets for batch certification: an .npz, a folder of .npy files, or the embedded MNIST.

Every source becomes the same plain data: float64 images in the model's value range (uint8
0-255 is scaled to [0, 1]; floats are taken as they are), integer labels, and a fingerprint of
both, so that a results store can tell whether it belongs to this data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from verifier.data import embedded_for
from verifier.errors import InputError
from verifier.network.graph import check_layout


@dataclass
class Dataset:
    images: np.ndarray  # (N, ...) float64
    labels: np.ndarray  # (N,) int64
    source: str  # what it was read from, for the report

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()

    def check_fits(self, input_shape: tuple[int, ...]) -> None:
        """Each sample must be in the model's layout (network.graph.check_layout)."""
        check_layout(self.images.shape[1:], input_shape, f"{self.source}: each sample")


def as_dataset(images, labels, source: str = "arrays") -> Dataset:
    """Arrays -> Dataset: uint8 images are divided by 255; labels must be integers, one per image."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim < 2 or len(images) == 0:
        raise InputError(f"{source}: images must be an array of samples (N, ...), got shape {images.shape}")
    if labels.shape != (len(images),):
        raise InputError(f"{source}: {len(images)} images but labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise InputError(f"{source}: labels must be integers")
    if images.dtype == np.uint8:
        scaled = images.astype(np.float64) / 255.0
    elif np.issubdtype(images.dtype, np.number):
        scaled = images.astype(np.float64)
    else:
        raise InputError(f"{source}: images have dtype {images.dtype}; expected uint8 or float")
    if not np.all(np.isfinite(scaled)):
        bad = int(np.flatnonzero(~np.isfinite(scaled.reshape(len(scaled), -1)).any(axis=1))[0])
        raise InputError(f"{source}: sample {bad} contains NaN or infinite values")
    return Dataset(scaled, labels.astype(np.int64), source)


def load_dataset(path: str | Path | None, input_shape: tuple[int, ...]) -> Dataset:
    """None: the embedded MNIST test slice (if the model takes one 28x28 image).
    A .npz with arrays `images` and `labels`. A folder: one .npy per sample (sorted by file
    name) and `labels.npy` (or labels.txt, one integer per line) in the same order."""
    if path is None:
        images, labels = embedded_for(input_shape, "--data")
        return Dataset(images, labels, "embedded MNIST test slice")
    path = Path(path)
    if path.is_dir():
        return _folder(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"images", "labels"} - set(data.files)
            if missing:
                raise InputError(f"{path}: missing array(s) {', '.join(sorted(missing))} "
                                 f"(found: {', '.join(data.files) or 'none'})")
            return as_dataset(data["images"], data["labels"], str(path))
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: cannot read as .npz ({type(e).__name__}: {e})") from None


def _folder(path: Path) -> Dataset:
    files = sorted(f for f in path.glob("*.npy") if f.name != "labels.npy")
    if not files:
        raise InputError(f"{path}: no .npy sample files in the folder")
    if (path / "labels.npy").exists():
        labels = np.load(path / "labels.npy", allow_pickle=False)
    elif (path / "labels.txt").exists():
        try:
            labels = np.array([int(line) for line in (path / "labels.txt").read_text().split()])
        except ValueError as e:
            raise InputError(f"{path / 'labels.txt'}: {e}") from None
    else:
        raise InputError(f"{path}: no labels.npy or labels.txt next to the samples")
    samples = []
    for f in files:
        try:
            samples.append(np.load(f, allow_pickle=False))
        except Exception as e:
            raise InputError(f"{f}: cannot read as .npy ({type(e).__name__}: {e})") from None
    shapes = {s.shape for s in samples}
    if len(shapes) > 1:
        raise InputError(f"{path}: samples have different shapes {sorted(shapes)}")
    return as_dataset(np.stack(samples), labels.ravel(), str(path))
