"""Lists of numbers as users give them: "0.01,0.02" on the command line or in a config file's
text, a number, or any array-like of numbers (the Python API: a list, a numpy array, a torch
tensor; a TOML list).

One reader for every such option (radii, per-channel mean and std), so that each refuses the same
things with the same one-line errors: an empty item, a boolean, text that is not a number, NaN
and infinities.
"""

from __future__ import annotations

import math

import numpy as np

from verifier.errors import InputError


def number_list(value, name: str, example: str = "0.01,0.02") -> list[float]:
    """The finite numbers of `value`, in the order given; an InputError naming `name` (the
    option) and the offending item otherwise. `example` shows a valid value in the message."""
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
        if any(part == "" for part in items):
            raise InputError(f"{name} {value!r}: expected a number or a comma list of numbers such as {example}")
    elif isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
        items = [value]
    else:  # any array-like: a list, a TOML array, a numpy array, a torch tensor
        try:
            items = list(np.asarray(value, dtype=object).reshape(-1))
        except Exception:
            raise InputError(f"{name} must be a number or a list of numbers, got {value!r}") from None
    if not items:
        raise InputError(f"{name}: no values given")
    numbers = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise InputError(f"{name}: {item!r} is not a number")
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise InputError(f"{name}: {item!r} is not a number (expected e.g. {example})") from None
        if not math.isfinite(number):
            raise InputError(f"{name}: {item!r} is not a finite number")
        numbers.append(number)
    return numbers
