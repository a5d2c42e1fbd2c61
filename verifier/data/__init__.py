"""The embedded default data: a slice of the MNIST test set shipped inside the package."""

from __future__ import annotations

from importlib import resources

import numpy as np

MNIST_SHAPE = (28, 28)


def embedded_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(images float64 in [0, 1], N x 28 x 28; labels int), the first 1,000 MNIST test images."""
    with resources.files(__package__).joinpath("mnist_test_1000.npz").open("rb") as f:
        data = np.load(f)
        return data["images"].astype(np.float64) / 255.0, data["labels"].astype(np.int64)


def fits_mnist(input_shape: tuple[int, ...]) -> bool:
    """A model input of one 28x28 image, in any of the usual layouts (1x28x28, 784, 784x1, ...)."""
    return int(np.prod(input_shape)) == 784
