"""The embedded default data: a slice of the MNIST test set shipped inside the package."""

from __future__ import annotations

from importlib import resources

from verifier.errors import InputError

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


def embedded_for(input_shape: tuple[int, ...], instead_of: str) -> tuple[np.ndarray, np.ndarray]:
    """The embedded data, used because no `instead_of` option was given; a one-line error for a
    model it does not fit."""
    if not fits_mnist(input_shape):
        raise InputError(f"no {instead_of} given, and the model's input shape {input_shape} does not "
                         "fit the embedded MNIST data (one 28x28 image)")
    return embedded_mnist()


def embedded_slice(input_shape: tuple[int, ...], start: int, limit: int) -> tuple[range, np.ndarray, np.ndarray]:
    """(indices, images, labels) of the embedded data a CLI table run covers, with one-line
    errors for a model it does not fit or a range outside it."""
    images, labels = embedded_for(input_shape, "--input")
    if not 0 <= start < len(images) or limit < 1:
        raise InputError(f"--start must be in 0..{len(images) - 1} and --limit >= 1 (got {start}, {limit})")
    return range(start, min(start + limit, len(images))), images, labels
